"""What observer hooks receive at the end of each step and stage: plain data, no behaviour."""

from __future__ import annotations

import attrs

from ralu_core.sampling.tokens import TokenState


@attrs.frozen(kw_only=True)
class StepEvent:
    """Broadcast to ``ralu_on_step_end`` after each Euler update."""

    stage: int
    step: int
    sigma: float
    sigma_next: float
    num_tokens: int
    active_tokens: int
    state: TokenState
    computed: bool = True
    """Whether the model ran for this step (False: a cache supplied the velocity)."""


@attrs.frozen(kw_only=True)
class StageEvent:
    """Broadcast to ``ralu_on_stage_end`` when a stage's last step is done."""

    stage: int
    steps: int
    num_tokens: int
    tokens_per_level: dict[int, int]
    state: TokenState
    token_cache_bytes: int = 0
    """Memory of the stage's token-level caches (RAS: every token's keys and values per layer, and the last
    output of every token, which sparse steps reuse); 0 for a stage that computes every token."""
