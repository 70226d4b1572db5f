"""Every cache recipe on every adapter it is registered for: it runs, and a batch equals single calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import RecipeConformance
from ralu_flux.testing import make_flux_pipeline
from ralu_sd3.testing import make_sd3_pipeline


class TestFluxCacheRecipes(RecipeConformance):
    adapter_name = "flux"
    recipe_plugins = ("caching",)
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("mid", seed=0)  # enough blocks for caches that keep a head and a tail


class TestSD3CacheRecipes(RecipeConformance):
    adapter_name = "sd3"
    recipe_plugins = ("caching",)
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-mid", seed=0)
