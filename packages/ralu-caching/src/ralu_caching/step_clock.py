"""What the fixed-schedule block caches share (imports diffusers; used by their hook modules): a per-context
state that counts evaluations, the clock hook that advances it and decides whether an evaluation is full, and
the hook that runs a module uncounted when a reusing step is counted on the meta device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ralu_core.measurement.flops import not_counted
from ralu_core.pipelines.diffusers_private import BaseState, ModelHook, StateManager, original_forward


class ClockState(BaseState):
    """One CFG branch's (one context's) state from the start of the current stage: the evaluations so far,
    whether this one is full, and what the cache keeps (`clear`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.evaluations = 0
        self.full = True
        self.clear()

    def clear(self) -> None:
        """Drop what the cache keeps (subclasses)."""


class StepClock(ModelHook):
    """On the first block (or the transformer): counts the evaluation and sets `full` by `is_full(step)`, the
    step being the evaluation's index in the stage; `on_step` lets a cache note more. The one stateful hook of
    a cache, so diffusers' contexts and resets reach the shared state through it."""

    _is_stateful = True

    def __init__(self, states: StateManager, is_full: Callable[[int], bool]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.is_full = states, is_full

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        state: ClockState = self.states.get_state()  # type: ignore[no-untyped-call]
        step = state.evaluations
        state.evaluations += 1
        state.full = self.is_full(step)
        self.on_step(state, step)
        return args, kwargs

    def on_step(self, state: Any, step: int) -> None:
        """What else a cache decides at each evaluation."""

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


class Uncounted(ModelHook):
    """For counting a reusing step on the meta device: the module runs (for its output's shape), uncounted."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        with not_counted():
            return original_forward(self)(*args, **kwargs)
