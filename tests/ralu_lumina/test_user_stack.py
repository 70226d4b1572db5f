"""A Lumina-Next pipeline as users load it, under the adapter's recipes: torchao's int8 and float8 weights
(`ralu_core.testing.quantized`; its transformer loads no GGUF file, LuminaPipeline loads no LoRA), model CPU
offload and group offloading (`.offload`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.offload import OffloadConformance
from ralu_core.testing.quantized import QuantizedConformance, needs_quantizers
from ralu_lumina.testing import make_lumina_pipeline


class Lumina:
    baseline = "lumina-baseline"
    recipes = ("ralu-lumina-4x", "ras-lumina")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_lumina_pipeline(seed=0)


@needs_quantizers
class TestLuminaQuantized(Lumina, QuantizedConformance):
    gguf = False  # LuminaNextDiT2DModel loads no single files


class TestLuminaOffload(Lumina, OffloadConformance):
    pass
