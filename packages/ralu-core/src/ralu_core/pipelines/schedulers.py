"""Which of a user's flow-matching schedulers a recipe can follow, checked on every call before any model runs.

ralu takes the steps itself: first-order Euler steps along the velocity, as diffusers'
``FlowMatchEulerDiscreteScheduler`` does. A schedule that hands its one stage the pipeline's own sigmas
(``uniform``: the baselines, RAS) reads them from a fresh copy of the user's scheduler, so the user's sigma
spacing (Karras, exponential, beta), shift type and terminal shift are followed exactly. A schedule that spaces
each stage's sigmas itself (``nt-dm``: RALU) would ignore them, so it refuses them rather than run another
schedule than the one the user chose. What no recipe can follow is refused for every recipe: another stepping
rule (Heun's two model calls per step) and stochastic sampling (fresh noise at every step). A terminal sigma
(``shift_terminal``) is followed by every schedule: ``nt-dm`` stretches its last stage to it.
"""

from __future__ import annotations

from typing import Any

from ralu_core.strategies.base import TimestepSchedule

SPACING = {
    "use_karras_sigmas": "Karras sigmas",
    "use_exponential_sigmas": "exponential sigmas",
    "use_beta_sigmas": "beta sigmas",
    "invert_sigmas": "inverted sigmas",
}
"""Scheduler options that change the sigmas a schedule of its own would not reproduce (flag -> what it is)."""
SWAP_BACK = "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)"


def scheduler_problems(scheduler: Any, schedule: TimestepSchedule, recipe: str) -> list[str]:
    """Why recipe `recipe`, whose timestep schedule is `schedule`, cannot follow `scheduler` (empty: it can)."""
    if scheduler is None:
        return []
    from diffusers import FlowMatchEulerDiscreteScheduler

    name = type(scheduler).__name__
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        how = " (two model calls per step)" if "Heun" in name else ""
        return [
            f"the pipeline's scheduler is {name}{how}; ralu takes first-order Euler steps, as "
            f"FlowMatchEulerDiscreteScheduler does, so no recipe would give that scheduler's images. Swap it back "
            f"({SWAP_BACK}) and keep its options (Karras, exponential or beta sigmas) in the config"
        ]
    config: Any = getattr(scheduler, "config", {})
    if config.get("stochastic_sampling", False):
        return [
            "the pipeline's scheduler samples stochastically (stochastic_sampling=True: fresh noise at every step); "
            "ralu's steps are deterministic Euler steps. Set stochastic_sampling=False in its config"
        ]
    if getattr(schedule, "follows_pipeline_sigmas", False):
        return []
    chosen = [label for flag, label in SPACING.items() if config.get(flag, False)]
    if config.get("time_shift_type", "exponential") != "exponential":
        chosen.append(f"a {config.get('time_shift_type')} time shift")
    if not chosen:
        return []
    return [
        f"recipe {recipe!r} spaces each stage's sigmas itself (schedule {schedule.name!r}), so it would ignore the "
        f"scheduler's {', '.join(chosen)}; use the scheduler's default spacing for this recipe, or a recipe whose "
        "schedule follows the pipeline's sigmas (a baseline, or RAS: schedule uniform)"
    ]
