"""Checks an adapter's RAS attention against its own dense forward: what a conforming adapter guarantees.

An adapter that sets ``cached_attention`` stands its own processors in for the model's while a stage
keeps keys and values. Three things must then hold, on any pipeline it drives (tests of each adapter
package, and of third-party ones, assert them on `cached_attention_outputs`):

* a dense step through the stand-in processors equals the model's own dense step exactly;
* a sparse step that computes every token, in order, equals the dense step exactly;
* a sparse step on a subset of tokens (a different one per image) gives each computed token the output
  of the dense step, when the skipped tokens' keys and values are those the dense step recorded: the
  same state, evaluated twice.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ralu_core.adapter import ModelAdapter
from ralu_core.strategies.base import StageInfo
from ralu_core.tokens import TokenState, gather_tokens


@attrs.frozen
class CachedAttentionOutputs:
    """Velocities of one state at one sigma, evaluated in the ways a RAS stage evaluates it."""

    plain: torch.Tensor
    """Dense, the model's own processors (no store)."""
    recorded: torch.Tensor
    """Dense, through the stand-in processors (the store records every token)."""
    everything: torch.Tensor
    """Sparse over every token in order, after `recorded`."""
    active: torch.Tensor
    """(B, M) the subset each image computes next (distinct per image)."""
    subset: torch.Tensor
    """(B, M, D) sparse over `active`, the others' keys and values as `recorded` left them."""
    dropped: torch.Tensor
    """(B, M, D) the same subset with the others left out of attention (``inactive: drop``)."""
    cache_bytes: int
    """The store's size after these evaluations."""


def cached_attention_outputs(
    adapter: ModelAdapter, pipeline: Any, call_kwargs: dict[str, Any], *, keep: float = 0.5, sigma: float = 0.7
) -> CachedAttentionOutputs:
    """Prepare a call of `pipeline` with `call_kwargs` and evaluate its initial noise at `sigma` each way."""
    prepare = adapter.bind(pipeline, 0, (), call_kwargs).prepare
    assert prepare is not None, f"{adapter!r} does not sample {type(pipeline).__name__} token by token"
    call: Any = prepare()
    state = TokenState.full_resolution(call.initial_noise(), call.grid)
    at = torch.tensor(sigma)
    count = max(1, int(state.num_tokens * keep))
    generator = torch.Generator().manual_seed(0)
    picks = [torch.randperm(state.num_tokens, generator=generator)[:count] for _ in range(state.batch_size)]
    active = torch.stack(picks).to(state.values.device)
    everything = torch.arange(state.num_tokens, device=state.values.device).expand(state.batch_size, -1)
    stage = StageInfo(index=0, num_tokens=state.num_tokens, steps=2)
    with torch.no_grad(), call.running():
        call.begin_stage(stage)
        plain = call.predict(state, at, None)
        dropped = call.predict(state, at, active)
        call.begin_stage(attrs.evolve(stage, cached_attention=True))
        recorded = call.predict(state, at, None)
        all_tokens = call.predict(state, at, everything)
        subset = call.predict(state, at, active)
        cache_bytes = call.token_cache_nbytes()
    return CachedAttentionOutputs(
        plain=plain,
        recorded=recorded,
        everything=all_tokens,
        active=active,
        subset=subset,
        dropped=dropped,
        cache_bytes=cache_bytes,
    )


def dense_at(outputs: CachedAttentionOutputs) -> torch.Tensor:
    """The dense step's velocity at the subset's tokens, to compare with `outputs.subset`."""
    return gather_tokens(outputs.plain, outputs.active)
