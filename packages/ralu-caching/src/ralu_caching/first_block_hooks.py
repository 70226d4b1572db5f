"""The diffusers hooks of `first-block` (see `ralu_caching.first_block`): the first block decides per image,
the others are skipped or run, the last applies the cache, for one call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from ralu_caching.blocks import BlockIO, hooks_installed, minus, plus, standard_blocks
from ralu_caching.stats import ReuseCounter

HOOK = "ralu_first_block"


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


@contextmanager
def first_block_installed(denoiser: Any, threshold: float, counter: ReuseCounter) -> Iterator[None]:
    """The hooks on `denoiser` for the duration of the block; `counter` counts the images that reused."""
    blocks = standard_blocks(denoiser, at_least=2)
    states = StateManager(_State)  # type: ignore[arg-type]
    placements: list[tuple[torch.nn.Module, ModelHook, str]] = [
        (blocks[0], _Head(states, BlockIO(blocks[0]), threshold, counter), HOOK)
    ]
    for index, block in enumerate(blocks[1:], start=1):
        placements.append((block, _Rest(states, BlockIO(block), is_tail=index == len(blocks) - 1), HOOK))
    with hooks_installed(denoiser, placements):
        yield
