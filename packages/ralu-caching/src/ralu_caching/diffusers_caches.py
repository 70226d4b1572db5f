"""`diffusers`: any cache diffusers offers, named with its parameters in a recipe.

    cache:
      - {name: diffusers, method: first-block, options: {threshold: 0.1}}

The cache is applied to the pipeline's transformer with diffusers' own ``apply_*`` function for the
duration of each call and removed afterwards (hooks the user had stay as they were). The engine's
lifecycle reaches it like any diffusers hook: a named context per CFG branch and image group, a
reset at every new token set. Timestep callbacks, which YAML cannot express, are supplied: they read
the timestep ralu is running. What diffusers' hooks skip is decided inside diffusers: such a cache is
counted as full in ``ralu flops`` and its reuse is not measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import attrs

from ralu_caching.blocks import hooks_added
from ralu_core.errors import ConfigFieldError, did_you_mean
from ralu_core.pipeline_call import current_timestep
from ralu_core.strategies.base import FeatureCache

METHODS: dict[str, tuple[str, str]] = {
    "first-block": ("FirstBlockCacheConfig", "apply_first_block_cache"),
    "taylorseer": ("TaylorSeerCacheConfig", "apply_taylorseer_cache"),
    "mag": ("MagCacheConfig", "apply_mag_cache"),
    "pyramid-attention-broadcast": ("PyramidAttentionBroadcastConfig", "apply_pyramid_attention_broadcast"),
    "faster": ("FasterCacheConfig", "apply_faster_cache"),
    "sea": ("SeaCacheConfig", "apply_sea_cache"),
}
"""Method name -> (config class, apply function) in ``diffusers.hooks``; class names are accepted too."""

SUPPLIED = frozenset({"current_timestep_callback"})
"""Config fields ralu fills in (callables, which a recipe cannot hold)."""


def available_methods() -> dict[str, tuple[Any, Any]]:
    """The methods the installed diffusers has: name -> (config class, apply function)."""
    from diffusers import hooks

    found = {}
    for method, (config_name, apply_name) in METHODS.items():
        config_cls, apply = getattr(hooks, config_name, None), getattr(hooks, apply_name, None)
        if config_cls is not None and apply is not None:
            found[method] = (config_cls, apply)
    return found


def _method_name(method: str) -> str:
    for name, (config_name, _) in METHODS.items():
        if method == config_name:
            return name
    return method


def _tupled(value: Any) -> Any:
    """YAML lists -> tuples (diffusers' configs take ranges such as (100, 800) as tuples)."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def build_config(method: str, options: Mapping[str, Any], timestep: Any = None) -> tuple[Any, Any]:
    """(diffusers config, apply function) for a method and recipe options; ConfigFieldError if wrong."""
    methods = available_methods()
    name = _method_name(method)
    if name not in methods:
        known = ", ".join(sorted(methods))
        raise ConfigFieldError(
            "method", f"unknown diffusers cache {method!r}{did_you_mean(name, methods)}; this diffusers has: {known}"
        )
    config_cls, apply = methods[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    settable = sorted(fields - SUPPLIED)
    unknown = sorted(set(options) - set(settable))
    if unknown:
        raise ConfigFieldError(
            "options",
            f"{config_cls.__name__} has no option {', '.join(map(repr, unknown))}; it takes: {', '.join(settable)}",
        )
    kwargs = {k: _tupled(v) for k, v in options.items()}
    if "current_timestep_callback" in fields:
        kwargs["current_timestep_callback"] = timestep or (lambda: None)
    try:
        return config_cls(**kwargs), apply
    except Exception as exc:
        raise ConfigFieldError("options", f"{config_cls.__name__} refused these options: {exc}") from None


@attrs.frozen(kw_only=True)
class DiffusersCacheConfig:
    method: str
    """A diffusers cache: first-block, taylorseer, mag, pyramid-attention-broadcast, faster, sea (or its class name)."""
    options: Mapping[str, Any] = attrs.field(factory=dict)
    """The config's fields, as diffusers names them (e.g. ``threshold`` for first-block)."""

    def __attrs_post_init__(self) -> None:
        build_config(self.method, self.options)  # refuse a bad recipe now, not at the first call


class DiffusersCache(FeatureCache):
    """Any cache diffusers offers (``method`` and its ``options``), applied for each call."""

    name: ClassVar[str] = "diffusers"
    keeps_block_features: ClassVar[bool] = True
    Config = DiffusersCacheConfig

    def planned_steps(self, steps: int) -> None:
        return None  # diffusers decides inside its hooks

    @contextmanager
    def _attached(self, denoiser: Any) -> Iterator[None]:
        if denoiser is None:
            raise ValueError("this pipeline's adapter exposes no transformer for diffusers' cache hooks")
        config, apply = build_config(self.config.method, self.config.options, lambda: current_timestep(denoiser))
        with hooks_added(denoiser):
            apply(denoiser, config)
            yield

    def attach(self, denoiser: Any) -> Any:
        return self._attached(denoiser)
