from __future__ import annotations

import pytest

from ralu_sd3.testing import make_sd3_pipeline


def _build(variant: str):  # type: ignore[no-untyped-def]
    pipeline = make_sd3_pipeline(variant, seed=0)  # type: ignore[arg-type]
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def sd3():  # type: ignore[no-untyped-def]
    return _build("sd3-tiny")


@pytest.fixture(scope="module")
def sd35():  # type: ignore[no-untyped-def]
    return _build("sd35-tiny")
