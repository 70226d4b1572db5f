"""How many tokens each stage of a recipe holds, known before sampling starts.

The counts follow from the grid and each selector's `planned_count`; they serve FLOPs accounting and
let the engine refuse a selector whose plan is impossible (negative, more than its candidates, not an
integer) before the first transformer call rather than after a stage of work. Selections made at run
time are checked against the same plan, and every problem names the strategy and its plugin.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ralu_core.errors import PluginError
from ralu_core.runtime import RecipeRuntime
from ralu_core.strategies.base import TokenSelector
from ralu_core.tokens import HALF


@attrs.frozen(kw_only=True)
class StageTokens:
    tokens: int
    """Image tokens in the stage (a half-resolution token counts once)."""
    candidates: int
    """Half-resolution tokens the transition into this stage chooses from (0 for the first stage)."""
    upsampled: int
    """How many of them it upsamples."""
    active: int | None
    """Tokens computed per step after the first, when the stage has a per-step selector."""


def planned_count(selector: TokenSelector, candidates: int, *, at_least_one: bool = False) -> int:
    """`selector.planned_count(candidates)`, refused unless it is an integer in range."""
    count: Any = selector.planned_count(candidates)
    low = 1 if at_least_one and candidates else 0
    if isinstance(count, bool) or not isinstance(count, int) or not low <= count <= candidates:
        raise PluginError(
            f"{selector.describe()} plans to pick {count!r} of {candidates} tokens; planned_count must return "
            f"an integer from {low} to {candidates}"
        )
    return count


def plan_tokens(runtime: RecipeRuntime, full_tokens: int) -> list[StageTokens]:
    """Token counts per stage for a grid of `full_tokens` full-resolution tokens."""
    low_res = full_tokens // 4 if runtime.start_level == HALF else 0
    half = low_res
    plan = []
    for index, stage in enumerate(runtime.stages):
        candidates = upsampled = 0
        if index > 0 and stage.selector is not None:
            candidates = half
            upsampled = planned_count(stage.selector, half)
            half -= upsampled
        tokens = half + 4 * (low_res - half) if low_res else full_tokens
        active = None
        if stage.step_tokens is not None:
            active = planned_count(stage.step_tokens, tokens, at_least_one=True)
        plan.append(StageTokens(tokens=tokens, candidates=candidates, upsampled=upsampled, active=active))
    return plan


def check_selection(selector: TokenSelector, picks: Any, batch: int, candidates: int) -> torch.Tensor:
    """A selector's answer must be a (batch, planned_count) integer tensor of distinct positions within
    the candidates; anything else is the plugin's error, named as such."""
    who = selector.describe()
    if not isinstance(picks, torch.Tensor):
        raise PluginError(f"{who} returned {type(picks).__name__}; select must return a tensor of positions")
    if picks.dtype.is_floating_point or picks.dtype.is_complex or picks.dtype == torch.bool:
        raise PluginError(f"{who} returned {picks.dtype} positions; select must return integer positions")
    expected = (batch, selector.planned_count(candidates))
    if tuple(picks.shape) != expected:
        raise PluginError(f"{who} returned shape {tuple(picks.shape)}, expected {expected}")
    if picks.numel():
        if int(picks.min()) < 0 or int(picks.max()) >= candidates:
            raise PluginError(f"{who} returned positions outside 0..{candidates - 1}")
        ordered = torch.sort(picks, dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise PluginError(f"{who} returned the same position twice for one image; positions must be distinct")
    return picks.long()
