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
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import attrs

from ralu_caching.blocks import hooks_added, standard_blocks
from ralu_core.errors import ConfigFieldError, did_you_mean
from ralu_core.pipelines.pipeline_call import current_timestep
from ralu_core.strategies.base import AdapterFacts, FeatureCache

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
    hints = _field_types(config_cls)
    for option, value in kwargs.items():
        hint = hints.get(option)
        if hint is not None and not _matches(value, hint):
            raise ConfigFieldError(
                "options", f"{config_cls.__name__}.{option} must be {_shown_type(hint)}, got {options[option]!r}"
            )
    if name == "faster" and not kwargs.get("is_guidance_distilled", False):
        raise ConfigFieldError(
            "options",
            "FasterCacheConfig expects each call's batch to hold the unconditional and the conditional branch "
            "together, and ralu evaluates every CFG branch on its own (its own cache context); set "
            "`is_guidance_distilled: true`, which makes diffusers treat every evaluation as one branch",
        )
    if "current_timestep_callback" in fields:
        kwargs["current_timestep_callback"] = timestep or (lambda: None)
    try:
        return config_cls(**kwargs), apply
    except Exception as exc:
        raise ConfigFieldError("options", f"{config_cls.__name__} refused these options: {exc}") from None


def _field_types(config_cls: Any) -> dict[str, Any]:
    """The config dataclass's field types, resolved (empty where diffusers' annotations cannot be)."""
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # an annotation naming something not importable here: checked by the class itself
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a recipe value (YAML lists already tuples) fits a field type; types this does not know pass,
    and the config class judges them."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_matches(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _shown_type(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


FIRST_BLOCK_NEEDS_TEXT = (
    "diffusers' first-block cache cannot run on {model}: the last block returns no text stream, and the cache "
    "adds its residual to both; use ralu's own `first-block` cache, which handles it where its residual can span "
    "the blocks"
)


def _check_first_block_target(denoiser: Any) -> None:
    """diffusers' first-block hook adds the cached residual to both streams of the last block's output, so it
    fails (a TypeError at the first reuse) on a model whose last block returns no text stream, such as SD3's
    (diffusers marks such a block `context_pre_only`). Refused here, before any model runs."""
    blocks = standard_blocks(denoiser, at_least=2)
    if getattr(blocks[-1], "context_pre_only", False):
        raise ValueError(FIRST_BLOCK_NEEDS_TEXT.format(model=type(denoiser).__name__))


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

    def check_adapter(self, adapter: AdapterFacts) -> list[str]:
        if _method_name(self.config.method) == "first-block" and not adapter.last_block_returns_text:
            return [FIRST_BLOCK_NEEDS_TEXT.format(model=f"{adapter.name!r} pipelines")]
        return []

    @contextmanager
    def _attached(self, denoiser: Any) -> Iterator[None]:
        if denoiser is None:
            raise ValueError("this pipeline's adapter exposes no transformer for diffusers' cache hooks")
        config, apply = build_config(self.config.method, self.config.options, lambda: current_timestep(denoiser))
        if _method_name(self.config.method) == "first-block":
            _check_first_block_target(denoiser)
        with hooks_added(denoiser):
            apply(denoiser, config)
            yield

    def attach(self, denoiser: Any) -> Any:
        return self._attached(denoiser)
