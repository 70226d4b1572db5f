"""ralu-caching's plugin: its caches, its recipes and the U-Net adapter, registered through the ``ralu``
entry point like any third-party plugin."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from ralu_caching.db_cache import DBCache
from ralu_caching.deepcache import DeepCacheDiT
from ralu_caching.delta_dit import DeltaDiTCache
from ralu_caching.diffusers_caches import DiffusersCache
from ralu_caching.first_block import FirstBlockCache
from ralu_caching.taylorseer import TaylorSeerCache
from ralu_caching.toca import ToCaCache
from ralu_caching.unet import DeepCacheUNet, UNetAdapter
from ralu_caching.velocity_forecast import VelocityForecastCache
from ralu_core.plugins.hookspecs import RegisterAdapter, RegisterCache, RegisterRecipe, hookimpl
from ralu_core.sampling.contract import ModelAdapter

RECIPES = (
    "ralu-flux-5x-delta-dit",
    "ralu-flux-5x-taylorseer",
    "ralu-flux-5x-taylorseer-fast",
    "ralu-flux-5x-toca",
    "ralu-sd3-3x-deepcache",
    "sd-deepcache",
)


@hookimpl
def ralu_register_feature_caches(register: RegisterCache) -> None:
    caches = (
        TaylorSeerCache,
        ToCaCache,
        VelocityForecastCache,
        DeltaDiTCache,
        DBCache,
        FirstBlockCache,
        DeepCacheDiT,
        DiffusersCache,
    )
    for cache in (*caches, DeepCacheUNet):
        register(cache)


@hookimpl
def ralu_register_model_adapters(register: RegisterAdapter) -> None:
    register(UNetAdapter())


@hookimpl
def ralu_resolve_model_adapter(pipeline: Any) -> ModelAdapter | None:
    adapter = UNetAdapter()
    return adapter if adapter.supports(pipeline) else None


@hookimpl
def ralu_register_recipes(register: RegisterRecipe) -> None:
    folder = files("ralu_caching") / "recipes"
    for name in RECIPES:
        register(name, Path(str(folder / f"{name}.yaml")))
