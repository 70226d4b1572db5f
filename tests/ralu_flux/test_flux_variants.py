"""FLUX's variant pipelines that the adapter does not drive yet are refused by name, with what they add and what to
use instead, before any work (`ralu_core.testing.conformance.VariantsRefused`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import VariantsRefused
from ralu_flux.testing import make_flux_pipeline


class TestFluxVariants(VariantsRefused):
    recipe = "ralu-flux-7x"
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)
