"""Exact FLOPs of every candidate before any model runs: the cheap first filter of ``ralu tune``.

Candidates share most transformer passes (a token count, with or without a cache's hooks), so the profile's
counts are kept per pass: thousands of candidates cost seconds, not one meta-device run each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs

from ralu_core.errors import RaluError
from ralu_core.measurement.accounting import StackedReuse, recipe_cost
from ralu_core.measurement.flops import FlopCount
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import bind_to_adapter
from ralu_core.plugins import Registry
from ralu_core.recipes.resolve import resolve_recipe
from ralu_core.sampling.contract import ModelAdapter
from ralu_core.sampling.runtime import RecipeRuntime
from ralu_core.sampling.tokens import TokenGrid
from ralu_core.tuning.space import Candidate, flops_signature

WINDOW = 0.05
"""A candidate serves a requested speed-up when its FLOPs ratio lies within ± this share of it."""


def _reuse_key(reuse: Any) -> Hashable | None:
    """What a cache's counting hooks do, by content (the cache's class, method and config), so that two
    candidates with the same cache settings share a count; None where that is not known."""
    if reuse is None:
        return ()
    if isinstance(reuse, StackedReuse):
        parts = tuple(_reuse_key(part) for part in reuse.parts)
        return None if None in parts else ("stacked", parts)
    if isinstance(reuse, functools.partial):
        inner = _reuse_key(reuse.func)
        bound = (reuse.args, tuple(sorted(reuse.keywords.items())))
        try:
            hash(bound)
        except TypeError:
            return None
        return None if inner is None else ("partial", inner, bound)
    owner, function = getattr(reuse, "__self__", None), getattr(reuse, "__func__", None)
    config = getattr(owner, "config", None)
    if owner is None or function is None or config is None:
        return None
    try:
        hash(config)
    except TypeError:
        return None
    return (type(owner).__qualname__, function.__qualname__, config)


class SharedCounts(FlopsProfile):
    """`profile` with each transformer pass and decode counted once for all candidates."""

    def __init__(self, profile: FlopsProfile) -> None:
        self.profile = profile
        self.name, self.baseline_steps, self.text_tokens = profile.name, profile.baseline_steps, profile.text_tokens
        self._passes: dict[Hashable, FlopCount] = {}
        self._decodes: dict[tuple[int, int], FlopCount] = {}

    def grid(self, height: int, width: int) -> TokenGrid:
        return self.profile.grid(height, width)

    def forward(
        self,
        image_tokens: int,
        reuse: Callable[[Any], AbstractContextManager[None]] | None = None,
        attended_tokens: int | None = None,
    ) -> FlopCount:
        what = _reuse_key(reuse)
        if what is None:
            return self.profile.forward(image_tokens, reuse, attended_tokens)
        key = (image_tokens, attended_tokens, what)
        if key not in self._passes:
            self._passes[key] = self.profile.forward(image_tokens, reuse, attended_tokens)
        return self._passes[key]

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        key = (latent_height, latent_width)
        if key not in self._decodes:
            self._decodes[key] = self.profile.decode(latent_height, latent_width)
        return self._decodes[key]


@attrs.frozen(kw_only=True)
class Costed:
    candidate: Candidate
    speedup: float | None
    """FLOPs of the model's own sampler at its default steps / the candidate's; None where it cannot run."""
    tflops: float | None = None
    problem: str = ""
    """Why it cannot run or be counted (a recipe check, an adaptive cache)."""


@attrs.define
class CostCounter:
    """Counts candidates on one model at one size, against the model's sampler at `steps` steps."""

    registry: Registry
    adapter: ModelAdapter
    profile: FlopsProfile
    height: int
    width: int
    steps: int
    include_attention: bool = True

    _known: dict[str, Costed] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.profile = SharedCounts(self.profile)

    def cost(self, candidate: Candidate) -> Costed:
        """The candidate's FLOPs ratio. Each candidate is checked on its own (its recipe resolved and bound to the
        adapter); the counting is shared by candidates of one FLOPs signature (plans that differ only in their
        stage ends or schedule parameters cost the same)."""
        try:
            runtime = resolve_recipe(candidate.recipe, self.registry)
            bind_to_adapter(self.adapter, runtime)
        except (RaluError, ValueError) as exc:
            return Costed(candidate=candidate, speedup=None, problem=str(exc).splitlines()[-1].strip(" -"))
        signature = flops_signature(candidate.recipe)
        known = self._known.get(signature)
        if known is None:
            known = self._known[signature] = self._count(candidate, runtime)
        return attrs.evolve(known, candidate=candidate)

    def _count(self, candidate: Candidate, runtime: RecipeRuntime) -> Costed:
        try:
            counted = recipe_cost(
                runtime, self.profile, self.height, self.width, steps=self.steps, baseline_steps=self.steps
            )
        except (RaluError, ValueError) as exc:
            return Costed(candidate=candidate, speedup=None, problem=str(exc).splitlines()[-1].strip(" -"))
        if counted.adaptive_caches:
            return Costed(
                candidate=candidate,
                speedup=None,
                problem=f"adaptive caches ({', '.join(counted.adaptive_caches)}): FLOPs known only after a run",
            )
        return Costed(
            candidate=candidate,
            speedup=counted.speedup(self.include_attention),
            tflops=counted.total.tflops(self.include_attention),
        )


def serves(speedup: float | None, target: float) -> bool:
    return speedup is not None and abs(speedup - target) <= WINDOW * target


def reachable(costed: Sequence[Costed]) -> tuple[float, float]:
    """The lowest and highest FLOPs speed-ups among the candidates that can run."""
    speeds = [c.speedup for c in costed if c.speedup is not None]
    return (min(speeds), max(speeds)) if speeds else (0.0, 0.0)
