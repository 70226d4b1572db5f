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

from ralu_core.errors import PluginError, RecipeError
from ralu_core.sampling.runtime import RecipeRuntime
from ralu_core.sampling.tokens import HALF
from ralu_core.strategies.base import TokenSelector


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


def step_counts(selector: TokenSelector, steps: int, tokens: int) -> tuple[int, ...]:
    """`selector.step_counts`, refused unless it gives, for each step, an integer from 1 to `tokens`."""
    counts: Any = selector.step_counts(steps, tokens)
    if (
        not isinstance(counts, tuple)
        or len(counts) != steps
        or any(isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= tokens for c in counts)
    ):
        raise PluginError(
            f"{selector.describe()} planned {counts!r} tokens for a stage of {steps} steps and {tokens} tokens; "
            f"step_counts must return {steps} integers from 1 to {tokens}"
        )
    return counts


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


def check_selection(
    selector: TokenSelector, picks: Any, batch: int, candidates: int, count: int | None = None
) -> torch.Tensor:
    """A selector's answer must be a (batch, count) integer tensor of distinct positions within the
    candidates (count: what was asked, else planned_count); anything else is the plugin's error."""
    who = selector.describe()
    if not isinstance(picks, torch.Tensor):
        raise PluginError(f"{who} returned {type(picks).__name__}; select must return a tensor of positions")
    if picks.dtype.is_floating_point or picks.dtype.is_complex or picks.dtype == torch.bool:
        raise PluginError(f"{who} returned {picks.dtype} positions; select must return integer positions")
    expected = (batch, selector.planned_count(candidates) if count is None else count)
    if tuple(picks.shape) != expected:
        raise PluginError(f"{who} returned shape {tuple(picks.shape)}, expected {expected}")
    # Values are checked only where the selector does not guarantee them: reading them waits for the device.
    if picks.numel() and not selector.valid_by_construction():
        if int(picks.min()) < 0 or int(picks.max()) >= candidates:
            raise PluginError(f"{who} returned positions outside 0..{candidates - 1}")
        ordered = torch.sort(picks, dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise PluginError(f"{who} returned the same position twice for one image; positions must be distinct")
    return picks.long()


def step_plan_problems(runtime: RecipeRuntime, steps_per_stage: tuple[int, ...]) -> list[str]:
    """What keeps each stage's per-step selector or a cache from running stages of these many steps (e.g. a
    dense reset step beyond the stage's end, a warm-up as long as the stage), as recipe problems with paths."""
    problems = []
    for index, (stage, steps) in enumerate(zip(runtime.stages, steps_per_stage, strict=True)):
        if stage.step_tokens is not None:
            problems += [f"$.stages[{index}].step_tokens: {p}" for p in stage.step_tokens.check_steps(steps)]
    for index, slot in enumerate(runtime.caches):
        working = {s: n for s, n in enumerate(steps_per_stage) if slot.active_in(s)}
        problems += [f"$.cache[{index}]: {p}" for p in slot.cache.check_stages(working)]
    return problems


def check_call_plan(
    runtime: RecipeRuntime, full_tokens: int, steps: int, strength: float | None = None
) -> list[StageTokens]:
    """The one check of a call's plan, before any model runs: each selector's token counts for this grid
    (PluginError), and each per-step selector and cache against the stages' step counts for a call of `steps`
    (and `strength`, image-to-image) (RecipeError listing every problem: a dense reset step beyond a stage's end
    is refused here, not at that step)."""
    plan = plan_tokens(runtime, full_tokens)
    if strength is not None and not runtime.schedule.starts_from_image:
        raise RecipeError(
            runtime.recipe.name,
            [f"$.schedule: {runtime.schedule.name!r} plans no start from an input image (image-to-image)"],
        )
    steps_per_stage = runtime.schedule.planned_steps([stage.spec for stage in runtime.stages], steps, strength)
    problems = step_plan_problems(runtime, steps_per_stage)
    if problems:
        raise RecipeError(runtime.recipe.name, [f"{p} (for a call of {steps} steps)" for p in problems])
    return plan
