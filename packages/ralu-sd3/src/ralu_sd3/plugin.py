"""ralu-sd3's plugin: the SD3 adapter and its built-in recipes, registered via entry points."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from ralu_core.adapter import ModelAdapter
from ralu_core.hookspecs import RegisterAdapter, RegisterRecipe, hookimpl
from ralu_sd3.adapter import SD3Adapter

RECIPES = ("sd3-baseline", "ralu-sd3-2x", "ralu-sd3-3x")


@hookimpl
def ralu_register_model_adapters(register: RegisterAdapter) -> None:
    register(SD3Adapter())


@hookimpl
def ralu_register_recipes(register: RegisterRecipe) -> None:
    folder = files("ralu_sd3") / "recipes"
    for name in RECIPES:
        register(name, Path(str(folder / f"{name}.yaml")))


@hookimpl
def ralu_resolve_model_adapter(pipeline: Any) -> ModelAdapter | None:
    adapter = SD3Adapter()
    return adapter if adapter.supports(pipeline) else None
