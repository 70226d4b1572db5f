"""The diffusers hooks of `delta-dit` (see `ralu_caching.delta_dit`): a clock on the transformer, and on every
block of either cached range a hook that records the range's deviation at full steps and skips the range
at the others, for one call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from ralu_caching.blocks import BlockIO, check_span, hooks_installed, minus, plus, standard_blocks
from ralu_caching.delta_dit import FRONT, REAR, cached_range
from ralu_caching.forecast_schedule import computes
from ralu_caching.pass_through import PassThrough
from ralu_caching.step_clock import ClockState, StepClock
from ralu_core.pipelines.diffusers_private import ModelHook, StateManager, original_forward

if TYPE_CHECKING:
    from ralu_caching.delta_dit import DeltaDiTCache

HOOK = "ralu_delta_dit"
Streams = tuple[torch.Tensor | None, torch.Tensor | None]


class _State(ClockState):
    def clear(self) -> None:
        self.active = REAR
        self.entry: dict[str, Streams] = {}
        """Per range: its input at this evaluation."""
        self.deviation: dict[str, Streams] = {}
        """Per range: its output minus its input at the last full step."""


class _Clock(StepClock):
    """On the transformer: counts the evaluation and decides whether it is full and which range it skips."""

    def __init__(self, states: StateManager, cache: DeltaDiTCache) -> None:
        super().__init__(states, partial(computes, warmup=cache.config.warmup, interval=cache.config.interval))
        self.cache = cache

    def on_step(self, state: _State, step: int) -> None:
        state.active = self.cache.range_at(step)


class _Block(ModelHook):
    """A block of a cached range: where a range starts its input is kept, where it ends (at a full step) its
    deviation; at a reusing step the active range's blocks pass their input on and its last adds the
    deviation kept."""

    def __init__(
        self, states: StateManager, io: BlockIO, starts: tuple[str, ...], ends: tuple[str, ...], within: tuple[str, ...]
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.io, self.starts, self.ends, self.within = states, io, starts, ends, within

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        inputs = self.io.inputs(args, kwargs)
        for which in self.starts:
            state.entry[which] = inputs
        active = state.active
        reusing = not state.full and active in self.within and active in state.deviation
        if reusing:
            if active not in self.ends:
                return self.io.pack(*inputs)
            entry, deviation = state.entry[active], state.deviation[active]
            hidden = plus(entry[0], deviation[0])
            assert hidden is not None
            return self.io.pack(hidden, plus(entry[1], deviation[1]))
        output = original_forward(self)(*args, **kwargs)
        if state.full:
            hidden, text = self.io.outputs(output)
            for which in self.ends:
                entry = state.entry[which]
                state.deviation[which] = (minus(hidden, entry[0]), minus(text, entry[1]))
        return output


def _ranges(denoiser: Any, cached: int | None) -> tuple[list[torch.nn.Module], dict[str, range]]:
    blocks = standard_blocks(denoiser, at_least=2)
    return blocks, {which: cached_range(len(blocks), cached, which) for which in (REAR, FRONT)}


@contextmanager
def delta_cache_installed(denoiser: Any, cache: DeltaDiTCache) -> Iterator[None]:
    """The hooks on `denoiser` for the duration of the block."""
    blocks, ranges = _ranges(denoiser, cache.config.cached_blocks)
    used = (REAR,) if cache.config.boundary is None else (REAR, FRONT)
    for which in used:
        check_span(blocks[ranges[which].start], blocks[ranges[which].stop - 1], "delta-dit")
    states = StateManager(_State)  # type: ignore[arg-type]
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = [(denoiser, _Clock(states, cache), HOOK)]
    for index, block in enumerate(blocks):
        within = tuple(w for w in used if index in ranges[w])
        if within:
            starts = tuple(w for w in within if index == ranges[w].start)
            ends = tuple(w for w in within if index == ranges[w].stop - 1)
            placements.append((block, _Block(states, BlockIO(block), starts, ends, within), HOOK))
    with hooks_installed(denoiser, placements):
        yield


def range_skipped(denoiser: Any, cached: int | None, which: str) -> AbstractContextManager[None]:
    """The range's blocks passing their input through (a reusing step without the deviation's addition,
    which costs no FLOPs), for counting."""
    blocks, ranges = _ranges(denoiser, cached)
    return hooks_installed(denoiser, [(blocks[i], PassThrough(BlockIO(blocks[i])), HOOK) for i in ranges[which]])
