"""The recipe data model: frozen attrs classes, data only (no code, no tensors).

A recipe names a schedule, lists stages (steps, where the stage ends in t, and for every stage
after the first the transition into it and the selector of tokens to upsample), and a list of
feature caches. Strategy parameters stay raw here; they are structured against each strategy's own
config class once plugins are loaded (see `resolve.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class StrategyRef:
    """A strategy by registered name plus its parameters, written inline in YAML:
    ``{name: canny-edge, ratio: 0.2}`` or just ``canny-edge``."""

    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)

    def to_yaml(self) -> dict[str, Any] | str:
        return {"name": self.name, **self.params} if self.params else self.name


@attrs.frozen(kw_only=True)
class CacheRef:
    """A feature cache in a recipe's ``cache:`` list: a strategy plus, optionally, the stages (by index)
    it works in: ``{name: taylorseer, interval: 2, stages: [2]}``. None: every stage."""

    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    stages: tuple[int, ...] | None = None

    @property
    def strategy(self) -> StrategyRef:
        return StrategyRef(name=self.name, params=self.params)

    def to_yaml(self) -> dict[str, Any] | str:
        extra = {} if self.stages is None else {"stages": list(self.stages)}
        return {"name": self.name, **self.params, **extra} if self.params or extra else self.name


@attrs.frozen(kw_only=True)
class Stage:
    """One stage of Euler steps on a fixed token set."""

    steps: int | None = None
    """Euler steps in this stage; None: the call's num_inference_steps (single-stage recipes)."""
    end: float = 1.0
    """Where the stage ends in t (0 noise, 1 data). Ends increase; the last is 1.0."""
    level: int | None = None
    """First stage only: 0 starts at full resolution, 1 at half resolution."""
    transition: StrategyRef | None = None
    """Stages after the first: how tokens change level on entering this stage."""
    selector: StrategyRef | None = None
    """Stages after the first: which half-resolution tokens to upsample on entering."""
    step_tokens: StrategyRef | None = None
    """Optional per-step selector of the tokens to compute (the rest reuse their last velocity)."""
    inactive: str | None = None
    """With `step_tokens`: how the tokens a step does not compute take part in its attention. ``kv-cache``
    (RAS, the default): through their keys and values cached at their last computation; ``drop``: not at
    all (cheaper attention, worse images)."""


@attrs.frozen(kw_only=True)
class Recipe:
    """A complete acceleration recipe."""

    name: str
    description: str = ""
    model: str | None = None
    """Adapter name this recipe is tuned for (e.g. ``flux``); None: any model."""
    schedule: StrategyRef
    stages: tuple[Stage, ...]
    cache: tuple[CacheRef, ...] = ()
    """Feature caches, applied in order (the first wraps the others); ``cache: none`` is the empty list."""

    @property
    def start_level(self) -> int:
        return self.stages[0].level or 0

    def to_yaml_dict(self) -> dict[str, Any]:
        """Plain data that `load_recipe_text` reads back into an equal recipe."""

        def stage(s: Stage) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for field in attrs.fields(Stage):
                value = getattr(s, field.name)
                if value is None:
                    continue
                out[field.name] = value.to_yaml() if isinstance(value, StrategyRef) else value
            return out

        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        if self.model:
            data["model"] = self.model
        data["schedule"] = self.schedule.to_yaml()
        data["stages"] = [stage(s) for s in self.stages]
        data["cache"] = [c.to_yaml() for c in self.cache] if self.cache else "none"
        return data
