"""ralu-caching's plugin: its caches and recipes, registered through the ``ralu`` entry point like any
third-party plugin."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ralu_caching.deepcache import DeepCacheDiT
from ralu_caching.diffusers_caches import DiffusersCache
from ralu_caching.first_block import FirstBlockCache
from ralu_caching.taylorseer import TaylorSeerCache
from ralu_core.hookspecs import RegisterCache, RegisterRecipe, hookimpl

RECIPES = ("ralu-flux-7x-taylorseer", "ralu-sd3-3x-taylorseer")


@hookimpl
def ralu_register_feature_caches(register: RegisterCache) -> None:
    for cache in (TaylorSeerCache, FirstBlockCache, DeepCacheDiT, DiffusersCache):
        register(cache)


@hookimpl
def ralu_register_recipes(register: RegisterRecipe) -> None:
    folder = files("ralu_caching") / "recipes"
    for name in RECIPES:
        register(name, Path(str(folder / f"{name}.yaml")))
