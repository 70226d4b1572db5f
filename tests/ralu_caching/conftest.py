from __future__ import annotations

from typing import Any

import pytest

from ralu_flux.testing import make_flux_pipeline
from ralu_sd3.testing import make_sd3_pipeline


def quiet(pipeline: Any) -> Any:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def flux():  # type: ignore[no-untyped-def]
    return quiet(make_flux_pipeline("tiny", seed=0))


@pytest.fixture(scope="module")
def flux_mid():  # type: ignore[no-untyped-def]
    """4 double + 8 single blocks: enough for caches that keep a head and a tail of blocks."""
    return quiet(make_flux_pipeline("mid", seed=0))


@pytest.fixture(scope="module")
def sd3():  # type: ignore[no-untyped-def]
    return quiet(make_sd3_pipeline("sd3-tiny", seed=0))


@pytest.fixture(scope="module")
def sd3_mid():  # type: ignore[no-untyped-def]
    return quiet(make_sd3_pipeline("sd3-mid", seed=0))
