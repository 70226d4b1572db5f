"""An SD3 pipeline whose transformer holds torchao int8 or float8 weights, under the adapter's recipes
(`ralu_core.testing.quantized`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

pytest.importorskip("torchao", reason="the nox test session installs torchao; ./dev's environment does not")

from ralu_core.testing.quantized import QuantizedConformance
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Quantized(QuantizedConformance):
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-tiny", seed=0)
