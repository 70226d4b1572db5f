"""An SD3 pipeline as users load it, under the adapter's recipes: LoRAs (`ralu_core.testing.lora`), torchao's
int8 and float8 weights and GGUF checkpoints (`.quantized`), model CPU offload and group offloading
(`.offload`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.lora import LoraConformance
from ralu_core.testing.offload import OffloadConformance
from ralu_core.testing.quantized import QuantizedConformance, needs_quantizers
from ralu_sd3.testing import make_sd3_pipeline


class SD3:
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-tiny", seed=0)


class TestSD3Lora(SD3, LoraConformance):
    pass


@needs_quantizers
class TestSD3Quantized(SD3, QuantizedConformance):
    pass


class TestSD3Offload(SD3, OffloadConformance):
    pass
