"""The FLUX.2 adapter against the conformance suite every adapter runs (`ralu_core.testing.conformance`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import AdapterConformance
from ralu_flux2.testing import make_flux2_pipeline


class TestFlux2Conformance(AdapterConformance):
    adapter_name = "flux2"
    recipe_plugins = ("flux2",)
    baseline = "flux2-baseline"
    full_size = "flux2-dev"
    # The chat template's system message takes 31 of the tokens; 64 keep every test prompt whole.
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 64}

    def make_pipeline(self) -> Any:
        return make_flux2_pipeline(seed=0)
