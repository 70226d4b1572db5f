"""A FLUX pipeline with LoRAs loaded by ``load_lora_weights`` under the adapter's recipes
(`ralu_core.testing.lora`): unfused and scaled per call, fused, and mixed by ``set_adapters``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.lora import LoraConformance
from ralu_flux.testing import make_flux_pipeline


class TestFluxLora(LoraConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)
