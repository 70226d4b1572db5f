"""ralu-flux's plugin: the FLUX adapter and its built-in recipes, registered via entry points."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from ralu_core.adapter import ModelAdapter
from ralu_core.hookspecs import RegisterAdapter, RegisterRecipe, hookimpl
from ralu_flux.adapter import FluxAdapter

RECIPES = ("flux-baseline", "ralu-flux-4x", "ralu-flux-5x", "ralu-flux-7x")


@hookimpl
def ralu_register_model_adapters(register: RegisterAdapter) -> None:
    register(FluxAdapter())


@hookimpl
def ralu_register_recipes(register: RegisterRecipe) -> None:
    folder = files("ralu_flux") / "recipes"
    for name in RECIPES:
        register(name, Path(str(folder / f"{name}.yaml")))


@hookimpl
def ralu_resolve_model_adapter(pipeline: Any) -> ModelAdapter | None:
    adapter = FluxAdapter()
    return adapter if adapter.supports(pipeline) else None
