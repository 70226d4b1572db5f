"""An SD3 pipeline with LoRAs loaded by ``load_lora_weights`` under the adapter's recipes
(`ralu_core.testing.lora`): unfused and scaled per call, fused, and mixed by ``set_adapters``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.lora import LoraConformance
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Lora(LoraConformance):
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-tiny", seed=0)
