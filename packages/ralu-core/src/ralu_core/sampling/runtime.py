"""A recipe with its strategies built: the plain data the engine, the accounting and reports run on.

It sits below the recipe resolver (which builds it) and the engine (which runs it), so that
neither depends on the other and the plugin machinery stays out of the sampling path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ralu_core.strategies.base import (
    FeatureCache,
    ResolutionTransition,
    StagePlanSpec,
    Strategy,
    TimestepSchedule,
    TokenSelector,
)

if TYPE_CHECKING:  # the recipes package imports this module through its resolver
    from ralu_core.recipes.model import Recipe


@attrs.frozen(kw_only=True)
class RuntimeStage:
    spec: StagePlanSpec
    transition: ResolutionTransition | None
    selector: TokenSelector | None
    step_tokens: TokenSelector | None
    cached_attention: bool = False
    """Whether the sparse steps attend to the inactive tokens through cached keys and values (RAS)."""


@attrs.frozen(kw_only=True)
class RuntimeCache:
    """A built feature cache and the stages it works in (None: all)."""

    cache: FeatureCache
    stages: frozenset[int] | None = None

    def active_in(self, stage: int) -> bool:
        return self.stages is None or stage in self.stages


@attrs.frozen(kw_only=True)
class RecipeRuntime:
    """A recipe with its strategies built; owned by one accelerated pipeline."""

    recipe: Recipe
    schedule: TimestepSchedule
    stages: tuple[RuntimeStage, ...]
    caches: tuple[RuntimeCache, ...] = ()

    @property
    def start_level(self) -> int:
        return self.recipe.start_level

    @property
    def cached_attention(self) -> bool:
        """Whether some stage needs the model call's key/value store (RAS attention)."""
        return any(stage.cached_attention for stage in self.stages)

    def caches_in(self, stage: int) -> tuple[FeatureCache, ...]:
        """The caches working in `stage`, outermost first."""
        return tuple(c.cache for c in self.caches if c.active_in(stage))

    def strategies(self) -> list[Strategy]:
        found: list[Strategy] = [self.schedule, *(c.cache for c in self.caches)]
        for stage in self.stages:
            found += [s for s in (stage.transition, stage.selector, stage.step_tokens) if s is not None]
        return found

    def reset(self) -> None:
        for strategy in self.strategies():
            strategy.reset()
