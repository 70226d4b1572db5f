"""An offloaded FLUX pipeline (model CPU offload, group offloading) under the adapter's recipes
(`ralu_core.testing.offload`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.offload import OffloadConformance
from ralu_flux.testing import make_flux_pipeline


class TestFluxOffload(OffloadConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)
