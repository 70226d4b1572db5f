"""A FLUX pipeline whose transformer holds torchao int8 or float8 weights, under the adapter's recipes
(`ralu_core.testing.quantized`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

pytest.importorskip("torchao", reason="the nox test session installs torchao; ./dev's environment does not")

from ralu_core.testing.quantized import QuantizedConformance
from ralu_flux.testing import make_flux_pipeline


class TestFluxQuantized(QuantizedConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)
