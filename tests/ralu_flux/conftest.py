from __future__ import annotations

import pytest

from ralu_flux.testing import make_flux_pipeline


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    pipeline = make_flux_pipeline("tiny", seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
