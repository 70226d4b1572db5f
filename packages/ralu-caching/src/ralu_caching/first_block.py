"""`first-block`: skip the remaining blocks while the first block's output barely changes (block level).

The first-block cache (ParaAttention; diffusers' ``FirstBlockCacheConfig``) runs the first transformer
block at every step and compares its residual (output minus input) with the one of the last step that
ran every block; below a relative threshold, the other blocks are skipped and their cached residual is
added instead. diffusers' implementation decides once for the whole batch (so an image's result
depends on the other images in its batch) and fails on SD3, whose last block returns no text stream.
This one decides per image: every image gets exactly the result it would get alone; the remaining
blocks are skipped when every image of the evaluation agrees. Its state lives in the engine's cache
contexts, so it is never shared by CFG branches or image groups, and is dropped at each new token set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import attrs
import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from ralu_caching.blocks import BlockIO, hooks_installed, minus, plus, standard_blocks
from ralu_caching.stats import ReuseCounter
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FeatureCache

HOOK = "ralu_first_block"


def _check_threshold(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 < value <= 10.0:
        raise ConfigFieldError("threshold", f"must be in (0, 10] (a relative change), got {value}")


@attrs.frozen(kw_only=True)
class FirstBlockConfig:
    threshold: float = attrs.field(default=0.12, validator=_check_threshold)
    """Relative mean absolute change of the first block's residual below which an image reuses the rest."""


class _State(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.reference: torch.Tensor | None = None  # first block's residual at each image's last full step
        self.skip: torch.Tensor | None = None  # per image, this evaluation
        self.head: tuple[torch.Tensor, torch.Tensor | None] | None = None  # first block's outputs, this evaluation
        self.tail: tuple[torch.Tensor | None, torch.Tensor | None] | None = None  # residual first -> last block


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class _Head(ModelHook):
    _is_stateful = True

    def __init__(self, states: StateManager, io: BlockIO, threshold: float, counter: ReuseCounter) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.io, self.threshold, self.counter = states, io, threshold, counter

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        hidden_in, _ = self.io.inputs(args, kwargs)
        hidden, text = self.io.outputs(output)
        residual = (hidden - hidden_in).float()
        batch = residual.shape[0]
        skip = torch.zeros(batch, dtype=torch.bool, device=residual.device)
        if state.reference is not None and state.tail is not None and state.reference.shape == residual.shape:
            change = (residual - state.reference).abs().flatten(1).mean(1)
            scale = state.reference.abs().flatten(1).mean(1).clamp_min(1e-12)
            skip = change / scale < self.threshold
        keep = _rows(skip, residual)
        state.reference = residual if state.reference is None else torch.where(keep, state.reference, residual)
        state.skip, state.head = skip, (hidden, text)
        self.counter.record(reused=int(skip.sum()), total=batch)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


class _Rest(ModelHook):
    """Every block after the first: skipped when all images reuse; the last one applies the cache."""

    def __init__(self, states: StateManager, io: BlockIO, is_tail: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.states, self.io, self.is_tail = states, io, is_tail

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _State = self.states.get_state()  # type: ignore[no-untyped-call]
        assert state.skip is not None and state.head is not None
        everyone = bool(state.skip.all())
        if everyone and not self.is_tail:
            return self.io.pack(*self.io.inputs(args, kwargs))
        if not everyone:
            output = self.fn_ref.original_forward(*args, **kwargs)  # type: ignore[misc]
            if not self.is_tail:
                return output
            hidden, text = self.io.outputs(output)
            head_hidden, head_text = state.head
            fresh = (minus(hidden, head_hidden), minus(text, head_text))
            if not bool(state.skip.any()):
                state.tail = fresh
                return output  # every image computed: the block's own output, bit for bit
        # Some or all images reuse: their output is the first block's plus their cached residual.
        assert state.tail is not None
        head_hidden, head_text = state.head
        if everyone:
            fresh = state.tail
            text = head_text if self.io.inputs(args, kwargs)[1] is not None else None
        keep = state.skip
        merged = [
            None if f is None or c is None else torch.where(_rows(keep, f), c, f)
            for f, c in zip(fresh, state.tail, strict=True)
        ]
        state.tail = (merged[0], merged[1])
        out_hidden = plus(head_hidden, merged[0])
        out_text = plus(head_text, merged[1]) if text is not None else None
        assert out_hidden is not None
        if not everyone:
            out_hidden = torch.where(_rows(keep, hidden), out_hidden, hidden)
            if out_text is not None and text is not None:
                out_text = torch.where(_rows(keep, text), out_text, text)
        return self.io.pack(out_hidden, out_text)


class FirstBlockCache(FeatureCache):
    """Per image, skip the blocks after the first while its residual changes less than `threshold`."""

    name: ClassVar[str] = "first-block"
    Config = FirstBlockConfig

    def __init__(self, config: FirstBlockConfig | None = None) -> None:
        super().__init__(config)
        self.counter = ReuseCounter()

    def reset(self) -> None:
        self.counter.clear()

    def planned_steps(self, steps: int) -> None:
        return None  # adaptive: `ralu bench` measures it

    def measured_reuse(self) -> tuple[int, int]:
        return self.counter.reused, self.counter.total

    @contextmanager
    def _attached(self, denoiser: Any) -> Iterator[None]:
        blocks = standard_blocks(denoiser, at_least=2)
        states = StateManager(_State)  # type: ignore[arg-type]
        placements: list[tuple[torch.nn.Module, ModelHook, str]] = [
            (blocks[0], _Head(states, BlockIO(blocks[0]), self.config.threshold, self.counter), HOOK)
        ]
        for index, block in enumerate(blocks[1:], start=1):
            placements.append((block, _Rest(states, BlockIO(block), is_tail=index == len(blocks) - 1), HOOK))
        with hooks_installed(denoiser, placements):
            yield

    def attach(self, denoiser: Any) -> Any:
        return self._attached(denoiser)
