"""`deepcache`: DeepCache's idea on the blocks of a diffusion transformer (block level).

DeepCache (Ma et al., 2024) observes that a U-Net's deep features change slowly between steps: it
recomputes the shallow layers every step and reuses the deep ones from the last full step. A DiT has
no U-shape, but its middle blocks play the same role: here the first `head` and last `tail` blocks run
at every step, and the middle blocks' contribution (their output minus their input, for the image and
the text stream) is computed at full steps and added at the others. A full step comes at every stage
start (the engine resets the state when the token set changes) and then every `interval` evaluations.
The schedule is fixed, so its FLOPs are counted exactly, and each image's result is the one it would
get alone. (For U-Net pipelines ralu-caching uses the `DeepCache` package itself.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

import attrs
import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from ralu_caching.blocks import BlockIO, hooks_installed, minus, plus, standard_blocks
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FULL_STEP, FeatureCache, PlannedStep

HOOK = "ralu_deepcache"


def _check(instance: DeepCacheConfig) -> None:
    if not 1 <= instance.interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (every step full) to 100, got {instance.interval}")
    for field in ("head", "tail"):
        if not 1 <= getattr(instance, field) <= 64:
            raise ConfigFieldError(field, f"must be from 1 to 64 blocks, got {getattr(instance, field)}")


@attrs.frozen(kw_only=True)
class DeepCacheConfig:
    interval: int = 3
    """A full evaluation every `interval` evaluations (from each stage start); the others reuse the middle."""
    head: int = 1
    """Blocks at the start that run at every step."""
    tail: int = 1
    """Blocks at the end that run at every step."""

    def __attrs_post_init__(self) -> None:
        _check(self)


def full_step(step: int, interval: int) -> bool:
    """Whether evaluation `step` of a stage (0 = the first) computes every block."""
    return step % interval == 0


class _State(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.evaluations = 0
        self.full = True
        self.entry: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.middle: tuple[torch.Tensor | None, torch.Tensor | None] | None = None

    @property
    def reusing(self) -> bool:
        return self.middle is not None and not self.full


class _First(ModelHook):
    """The first block: counts the evaluation and decides whether this one is full."""

    _is_stateful = True

    def __init__(self, states: StateManager, interval: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.interval = states, interval

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        state.full = full_step(state.evaluations, self.interval)
        state.evaluations += 1
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


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
        output = self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
        if self.last:
            assert state.entry is not None
            hidden, text = self.io.outputs(output)
            state.middle = (minus(hidden, state.entry[0]), minus(text, state.entry[1]))
        return output


class _PassThrough(ModelHook):
    def __init__(self, io: BlockIO) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.io = io

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.io.pack(*self.io.inputs(args, kwargs))


class DeepCacheDiT(FeatureCache):
    """Run the first and last blocks every step; reuse the middle blocks' contribution between full steps."""

    name: ClassVar[str] = "deepcache"
    Config = DeepCacheConfig

    @contextmanager
    def _attached(self, denoiser: Any) -> Iterator[None]:
        config: DeepCacheConfig = self.config
        blocks = standard_blocks(denoiser, at_least=config.head + config.tail + 1)
        states = StateManager(_State)  # type: ignore[arg-type]
        middle = blocks[config.head : len(blocks) - config.tail]
        placements: list[tuple[torch.nn.Module, ModelHook, str]] = [(blocks[0], _First(states, config.interval), HOOK)]
        for index, block in enumerate(middle):
            hook = _Middle(states, BlockIO(block), first=index == 0, last=index == len(middle) - 1)
            placements.append((block, hook, HOOK))
        with hooks_installed(denoiser, placements):
            yield

    def attach(self, denoiser: Any) -> Any:
        return self._attached(denoiser)

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        reused = PlannedStep(reuse=self._skip_middle, kind="middle blocks reused")
        return tuple(FULL_STEP if full_step(j, self.config.interval) else reused for j in range(steps))

    def _skip_middle(self, denoiser: Any) -> AbstractContextManager[None]:
        """On a (meta-device) model: what a reusing step runs, for counting (the middle blocks pass through)."""
        config: DeepCacheConfig = self.config
        blocks = standard_blocks(denoiser, at_least=config.head + config.tail + 1)
        middle = blocks[config.head : len(blocks) - config.tail]
        return hooks_installed(denoiser, [(block, _PassThrough(BlockIO(block)), HOOK) for block in middle])
