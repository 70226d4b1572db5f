"""A FLUX pipeline as users load it, under the adapter's recipes: LoRAs (`ralu_core.testing.lora`), torchao's
int8 and float8 weights and GGUF checkpoints (`.quantized`), model CPU offload and group offloading
(`.offload`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.lora import LoraConformance
from ralu_core.testing.offload import OffloadConformance
from ralu_core.testing.quantized import QuantizedConformance, needs_quantizers
from ralu_flux.testing import make_flux_pipeline


class Flux:
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)


class TestFluxLora(Flux, LoraConformance):
    pass


@needs_quantizers
class TestFluxQuantized(Flux, QuantizedConformance):
    pass


class TestFluxOffload(Flux, OffloadConformance):
    pass
