"""The Lumina-Next adapter against the conformance suite every adapter runs (`ralu_core.testing.conformance`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import AdapterConformance
from ralu_lumina.testing import make_lumina_pipeline


class TestLuminaConformance(AdapterConformance):
    adapter_name = "lumina"
    recipe_plugins = ("lumina",)
    baseline = "lumina-baseline"
    full_size = "lumina-next-sft"
    call: ClassVar[Mapping[str, Any]] = {"clean_caption": False}

    def make_pipeline(self) -> Any:
        return make_lumina_pipeline(seed=0)
