"""What ``ralu schedule`` reports: the schedule a recipe will run, and the published values for a plan.

Published NT-DM values live only in the recipes that pin them (with a ``source``), so the core holds
no table of paper numbers: a stage plan is compared with every registered recipe that pins one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from ralu_core.errors import RaluError
from ralu_core.plugins import Registry
from ralu_core.recipes.resolve import find_recipe, resolve_recipe
from ralu_core.sampling.ntdm import NTDMSolution, solve_ntdm
from ralu_core.sampling.runtime import RecipeRuntime
from ralu_core.strategies.base import ScheduleContext
from ralu_core.strategies.schedules import NTDMSchedule


class _NeedsPipeline(RaluError):
    """Raised by the preview context when a schedule asks for the pipeline's own sigmas."""


def _pipeline_sigmas(steps: int) -> torch.Tensor:
    raise _NeedsPipeline(steps)


@attrs.frozen(kw_only=True)
class PinnedSchedule:
    """Fixed NT-DM values that registered recipes run (an ablation shares its recipe's), and their source."""

    recipes: tuple[str, ...]
    source: str
    solution: NTDMSolution


def pinned_schedules(registry: Registry) -> list[PinnedSchedule]:
    """Every distinct nt-dm schedule that registered recipes pin (shifts and c with a `source`)."""
    groups: dict[tuple[Any, ...], PinnedSchedule] = {}
    for name in sorted(registry.recipes):
        runtime = resolve_recipe(find_recipe(name, registry), registry)
        schedule = runtime.schedule
        if not isinstance(schedule, NTDMSchedule) or schedule.config.mode != "pinned":
            continue
        if schedule.config.source is None or schedule.config.base_shift is None:
            continue
        solution = schedule.solution([s.spec for s in runtime.stages], schedule.config.base_shift)
        key = (schedule.config.source, solution.steps, solution.ends, solution.base_shift, solution.shifts, solution.c)
        known = groups.get(key)
        recipes = (*known.recipes, name) if known else (name,)
        groups[key] = PinnedSchedule(recipes=recipes, source=schedule.config.source, solution=solution)
    return list(groups.values())


def published_for(
    registry: Registry, steps: Sequence[int], ends: Sequence[float], base_shift: float
) -> list[PinnedSchedule]:
    """The pinned schedules whose stage plan (steps, ends, base shift) is exactly this one."""
    return [
        p
        for p in pinned_schedules(registry)
        if list(p.solution.steps) == list(steps)
        and list(p.solution.ends) == [float(e) for e in ends]
        and p.solution.base_shift == float(base_shift)
    ]


def recipe_schedule(runtime: RecipeRuntime, base_shift: float) -> dict[str, Any]:
    """The schedule `runtime` will run, as plain data; `base_shift` is used where the recipe leaves it
    to the pipeline. A schedule that needs the pipeline's own sigmas reports ``sigmas: None``."""
    schedule = runtime.schedule
    specs = [s.spec for s in runtime.stages]
    report: dict[str, Any] = {"recipe": runtime.recipe.name, "schedule": schedule.name}
    context = ScheduleContext(
        requested_steps=None, default_steps=0, default_shift=base_shift, pipeline_sigmas=_pipeline_sigmas
    )
    try:
        plan = schedule.plan(specs, context)
    except _NeedsPipeline:
        report.update(
            steps=[s.steps for s in specs],
            sigmas=None,
            note=f"the {schedule.name} schedule runs the pipeline's own sigmas, which depend on the model and "
            "the image size (FLUX shifts them by resolution); the call's num_inference_steps sets the steps",
        )
        return report
    report.update({"sigmas": [s.tolist() for s in plan.sigmas], **plan.details, "steps": list(plan.steps)})
    if isinstance(schedule, NTDMSchedule) and schedule.config.mode == "pinned":
        report["solved"] = solve_ntdm(report["steps"], [s.end for s in specs], report["base_shift"]).to_dict()
    return report
