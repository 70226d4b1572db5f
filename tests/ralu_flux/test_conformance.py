"""The FLUX adapter against the conformance suite every adapter runs (`ralu_core.testing.conformance`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import AdapterConformance
from ralu_flux.testing import make_flux_pipeline


class TestFluxConformance(AdapterConformance):
    adapter_name = "flux"
    recipe_plugins = ("flux",)
    baseline = "flux-baseline"
    full_size = "flux-dev"
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)
