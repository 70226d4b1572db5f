"""The diffusers hooks of `deepcache` (see `ralu_caching.deepcache`): a counter on the first block, the middle
blocks skipped or recorded, for one call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any

import torch

from ralu_caching.blocks import BlockIO, check_span, hooks_installed, minus, plus, standard_blocks
from ralu_caching.deepcache import DeepCacheConfig, full_step
from ralu_caching.pass_through import PassThrough
from ralu_caching.step_clock import ClockState, StepClock
from ralu_core.pipelines.diffusers_private import ModelHook, StateManager, original_forward

HOOK = "ralu_deepcache"


class _State(ClockState):
    def clear(self) -> None:
        self.entry: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.middle: tuple[torch.Tensor | None, torch.Tensor | None] | None = None

    @property
    def reusing(self) -> bool:
        return self.middle is not None and not self.full


class _Middle(ModelHook):
    """A middle block: skipped when reusing; the first records its input, the last its contribution."""

    def __init__(self, states: StateManager, io: BlockIO, *, first: bool, last: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.io, self.first, self.last = states, io, first, last

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        if self.first:
            state.entry = self.io.inputs(args, kwargs)
        if state.reusing:
            if not self.last:
                return self.io.pack(*self.io.inputs(args, kwargs))
            assert state.entry is not None and state.middle is not None
            hidden, text = state.entry
            out_hidden = plus(hidden, state.middle[0])
            assert out_hidden is not None
            return self.io.pack(out_hidden, plus(text, state.middle[1]))
        output = original_forward(self)(*args, **kwargs)
        if self.last:
            assert state.entry is not None
            hidden, text = self.io.outputs(output)
            state.middle = (minus(hidden, state.entry[0]), minus(text, state.entry[1]))
        return output


def _first_and_middle(denoiser: Any, config: DeepCacheConfig) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    blocks = standard_blocks(denoiser, at_least=config.head + config.tail + 1)
    return blocks[0], blocks[config.head : len(blocks) - config.tail]


@contextmanager
def deepcache_installed(denoiser: Any, config: DeepCacheConfig) -> Iterator[None]:
    """The hooks on `denoiser` for the duration of the block."""
    first_block, middle = _first_and_middle(denoiser, config)
    check_span(middle[0], middle[-1], "deepcache")
    states = StateManager(_State)  # type: ignore[arg-type]
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = [
        (first_block, StepClock(states, partial(full_step, interval=config.interval)), HOOK)
    ]
    for index, block in enumerate(middle):
        hook = _Middle(states, BlockIO(block), first=index == 0, last=index == len(middle) - 1)
        placements.append((block, hook, HOOK))
    with hooks_installed(denoiser, placements):
        yield


def middle_skipped(denoiser: Any, config: DeepCacheConfig) -> AbstractContextManager[None]:
    """The middle blocks passing their input through (what a reusing step runs), for counting."""
    _, middle = _first_and_middle(denoiser, config)
    return hooks_installed(denoiser, [(block, PassThrough(BlockIO(block)), HOOK) for block in middle])
