"""A Lumina-Next pipeline whose transformer holds torchao int8 or float8 weights, under the adapter's recipes
(`ralu_core.testing.quantized`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

pytest.importorskip("torchao", reason="the nox test session installs torchao; ./dev's environment does not")

from ralu_core.testing.quantized import QuantizedConformance
from ralu_lumina.testing import make_lumina_pipeline


class TestLuminaQuantized(QuantizedConformance):
    baseline = "lumina-baseline"
    recipes = ("ralu-lumina-4x", "ras-lumina")
    gguf = False  # LuminaNextDiT2DModel loads no single files (no GGUF checkpoints through diffusers)
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_lumina_pipeline(seed=0)
