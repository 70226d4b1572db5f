"""The diffusers hooks of `db-cache` and its F1B0 case `first-block` (see `ralu_caching.db_cache`): the front
blocks run and the last of them decides per image, the middle blocks are skipped or run and the last of them
applies the cached residual, the back blocks run, for one call."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ralu_caching.blocks import BlockIO, check_span, hooks_installed, minus, plus, standard_blocks
from ralu_caching.stats import ReuseCounter
from ralu_core.pipelines.diffusers_private import BaseState, ModelHook, StateManager, original_forward

if TYPE_CHECKING:
    from ralu_caching.db_cache import DBCacheConfig

HOOK = "ralu_db_cache"


class _State(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.evaluations = 0
        self.entry: torch.Tensor | None = None  # the image stream entering the first block, this evaluation
        self.reference: torch.Tensor | None = None  # front blocks' residual at each image's last full step
        self.skip: torch.Tensor | None = None  # per image, this evaluation
        self.run: torch.Tensor | None = None  # per image: evaluations reused in a row
        self.reused: torch.Tensor | None = None  # per image: evaluations reused since the stage started
        self.head: tuple[torch.Tensor, torch.Tensor | None] | None = None  # front blocks' outputs, this evaluation
        self.tail: tuple[torch.Tensor | None, torch.Tensor | None] | None = None  # residual front -> last middle
        self.series: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []  # its Taylor factors (order 0: tail)
        self.since: torch.Tensor | None = None  # per image: evaluations since its last full one
        self.gap: torch.Tensor | None = None  # per image: this evaluation's distance from its last full one
        self.had: torch.Tensor | None = None  # per image: whether it had a full evaluation before this one
        self.computed: torch.Tensor | None = None  # per image: whether it has had one in this stage


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class _Front(ModelHook):
    """A front block: it always runs; the first keeps the image stream entering it, the last compares the front
    blocks' residual with each image's at its last full step and decides which images reuse the middle."""

    _is_stateful = True

    def __init__(
        self,
        states: StateManager,
        io: BlockIO,
        config: DBCacheConfig,
        counter: ReuseCounter,
        *,
        first: bool,
        last: bool,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.io, self.config, self.counter = states, io, config, counter
        self.first, self.last = first, last

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        if self.first:
            state.entry = self.io.inputs(args, kwargs)[0]
        output = original_forward(self)(*args, **kwargs)
        if self.last:
            assert state.entry is not None
            hidden, text = self.io.outputs(output)
            state.skip, state.head = self._decide(state, (hidden - state.entry).float()), (hidden, text)
        return output

    def _decide(self, state: _State, residual: torch.Tensor) -> torch.Tensor:
        """Per image: whether it reuses the middle blocks' residual at this evaluation."""
        step = state.evaluations
        state.evaluations += 1
        batch = residual.shape[0]
        skip = torch.zeros(batch, dtype=torch.bool, device=residual.device)
        same = state.reference is not None and state.reference.shape == residual.shape
        if same and state.tail is not None and step >= self.config.warmup:
            assert state.reference is not None
            change = (residual - state.reference).abs().flatten(1).mean(1)
            scale = state.reference.abs().flatten(1).mean(1).clamp_min(1e-12)
            skip = change / scale < self.config.threshold
        if state.run is None or state.run.shape[0] != batch:
            state.run = torch.zeros(batch, dtype=torch.long, device=residual.device)
            state.reused, state.since = torch.zeros_like(state.run), torch.zeros_like(state.run)
            state.computed = torch.zeros(batch, dtype=torch.bool, device=residual.device)
        assert state.reused is not None and state.since is not None and state.computed is not None
        if self.config.max_consecutive is not None:
            skip = skip & (state.run < self.config.max_consecutive)
        if self.config.max_cached is not None:
            skip = skip & (state.reused < self.config.max_cached)
        state.run = torch.where(skip, state.run + 1, torch.zeros_like(state.run))
        state.reused = state.reused + skip.long()
        state.gap, state.had = state.since + 1, state.computed
        state.since = torch.where(skip, state.since + 1, torch.zeros_like(state.since))
        state.computed = state.computed | ~skip
        keep = _rows(skip, residual)
        state.reference = (
            torch.where(keep, state.reference, residual) if state.reference is not None and same else residual
        )
        self.counter.record(reused=int(skip.sum()), total=batch)
        return skip

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


class _Rest(ModelHook):
    """A middle block: skipped when all images reuse; the last one applies the cached residual."""

    def __init__(self, states: StateManager, io: BlockIO, is_tail: bool, order: int = 0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.io, self.is_tail, self.order = states, io, is_tail, order

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        assert state.skip is not None and state.head is not None
        everyone = bool(state.skip.all())
        if everyone and not self.is_tail:
            return self.io.pack(*self.io.inputs(args, kwargs))
        if not everyone:
            output = original_forward(self)(*args, **kwargs)
            if not self.is_tail:
                return output
            hidden, text = self.io.outputs(output)
            head_hidden, head_text = state.head
            fresh = (minus(hidden, head_hidden), minus(text, head_text))
            if not bool(state.skip.any()):
                self._record(state, fresh)
                return output  # every image computed: the block's own output, bit for bit
        # Some or all images reuse: their output is the first block's plus their cached residual (its Taylor
        # series at this evaluation's distance from their last full one, with the calibrator).
        assert state.tail is not None and state.gap is not None
        head_hidden, head_text = state.head
        hidden_series, text_series = ([f[i] for f in state.series] for i in (0, 1))
        cached = (_series_value(hidden_series, state.gap), _series_value(text_series, state.gap))
        if everyone:
            fresh = cached
            text = head_text if self.io.inputs(args, kwargs)[1] is not None else None
        else:
            self._record(state, fresh)
        keep = state.skip
        merged = [
            None if f is None or c is None else torch.where(_rows(keep, f), c, f)
            for f, c in zip(fresh, cached, strict=True)
        ]
        out_hidden = plus(head_hidden, merged[0])
        out_text = plus(head_text, merged[1]) if text is not None else None
        assert out_hidden is not None
        if not everyone:
            out_hidden = torch.where(_rows(keep, hidden), out_hidden, hidden)
            if out_text is not None and text is not None:
                out_text = torch.where(_rows(keep, text), out_text, text)
        return self.io.pack(out_hidden, out_text)

    def _record(self, state: _State, fresh: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        """The images that computed renew their residual and its Taylor factors (finite differences over the
        distance between their last two full evaluations); the others keep theirs."""
        assert state.skip is not None and state.gap is not None and state.had is not None
        computing = ~state.skip
        streams = [
            _updated_series([f[i] for f in state.series], fresh[i], computing, state.had, state.gap, self.order)
            for i in (0, 1)
        ]
        state.series = [(streams[0][k], streams[1][k] if k < len(streams[1]) else None) for k in range(len(streams[0]))]
        state.tail = state.series[0]


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _series_value(factors: list[torch.Tensor | None], offset: torch.Tensor) -> torch.Tensor | None:
    """sum of factor_k * offset**k / k!, per image (order 0: the residual itself)."""
    value = factors[0]
    for k in range(1, len(factors)):
        factor = factors[k]
        if value is None or factor is None:
            break
        value = value + factor * _per_image(offset.double() ** k / math.factorial(k), factor)
    return value


def _updated_series(
    old: list[torch.Tensor | None],
    fresh: torch.Tensor | None,
    computing: torch.Tensor,
    had: torch.Tensor,
    gap: torch.Tensor,
    order: int,
) -> list[torch.Tensor | None]:
    """Factors after this evaluation: for the images that computed, `fresh` and the differences of each factor
    against their previous one over `gap` (zero where an image has no previous full evaluation); for the others,
    their old factors."""
    if fresh is None:
        return [None]
    if not old or old[0] is None or old[0].shape != fresh.shape:
        return [fresh]
    rows = _rows(computing, fresh)
    new: list[torch.Tensor | None] = [torch.where(rows, fresh, old[0])]
    chain = fresh
    for k in range(1, order + 1):
        previous = old[k - 1]
        if previous is None:
            break
        chain = (chain - previous) / _per_image(gap.double(), chain)
        kept = old[k] if k < len(old) and old[k] is not None else torch.zeros_like(chain)
        assert kept is not None
        new.append(torch.where(_rows(computing & had, chain), chain, torch.where(rows, torch.zeros_like(chain), kept)))
    return new


@contextmanager
def db_cache_installed(denoiser: Any, config: DBCacheConfig, counter: ReuseCounter) -> Iterator[None]:
    """The hooks on `denoiser` for the duration of the block; `counter` counts the images that reused."""
    blocks = standard_blocks(denoiser, at_least=config.front + config.back + 1)
    check_span(blocks[0], blocks[len(blocks) - config.back - 1], "db-cache")
    states = StateManager(_State)  # type: ignore[arg-type]
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = []
    for index, block in enumerate(blocks[: config.front]):
        front = _Front(states, BlockIO(block), config, counter, first=index == 0, last=index == config.front - 1)
        placements.append((block, front, HOOK))
    middle = blocks[config.front : len(blocks) - config.back]
    for index, block in enumerate(middle):
        tail = index == len(middle) - 1
        placements.append((block, _Rest(states, BlockIO(block), is_tail=tail, order=config.residual_order), HOOK))
    with hooks_installed(denoiser, placements):
        yield
