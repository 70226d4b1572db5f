"""Which of a user's flow-matching scheduler options a recipe follows and which it refuses, by message: the rules
behind `AdapterConformance.test_a_scheduler_the_user_swapped_in_is_followed_or_refused`, for the options that
suite does not run through a pipeline."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest

from ralu_core.pipelines.schedulers import scheduler_problems
from ralu_core.strategies.schedules import NTDMSchedule, UniformSchedule

EULER: Any = diffusers.FlowMatchEulerDiscreteScheduler


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, "a linear time shift"),
        ({"invert_sigmas": True}, "inverted sigmas"),
        ({"use_karras_sigmas": True, "shift_terminal": 0.1}, "Karras sigmas"),
    ],
)
def test_a_schedule_of_its_own_refuses_what_it_would_ignore_and_the_pipelines_sigmas_follow_it(
    options: dict[str, Any], named: str
) -> None:
    scheduler = EULER(**options)
    assert scheduler_problems(scheduler, UniformSchedule(UniformSchedule.Config()), "flux-baseline") == []
    (problem,) = scheduler_problems(scheduler, NTDMSchedule(NTDMSchedule.Config()), "ralu-flux-7x")
    expected = f"spaces each stage's sigmas itself (schedule 'nt-dm'), so it would ignore the scheduler's {named};"
    assert problem.startswith("recipe 'ralu-flux-7x' ") and expected in problem


def test_the_default_scheduler_and_no_scheduler_are_fine() -> None:
    for schedule in (UniformSchedule(UniformSchedule.Config()), NTDMSchedule(NTDMSchedule.Config())):
        assert scheduler_problems(EULER(shift=3.0), schedule, "r") == []
        # A terminal sigma (Qwen-Image's 0.02) is followed by nt-dm: its last stage is stretched to it.
        assert scheduler_problems(EULER(shift=3.0, shift_terminal=0.02), schedule, "r") == []
        assert scheduler_problems(None, schedule, "r") == []


def test_a_terminal_sigma_stretches_the_last_stage_as_diffusers_stretches_a_whole_schedule() -> None:
    """From pure noise the stretch is diffusers' ``shift_terminal`` one; from a rewound start it keeps that start
    (where the transition put the latents), ends at the terminal sigma, keeps the steps' order and count."""
    import torch

    from ralu_core.strategies.base import ScheduleContext, StagePlanSpec
    from ralu_core.strategies.schedules import stretch_to_terminal

    scheduler = EULER(shift=2.0, shift_terminal=0.02)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.2, 5).tolist())
    unstretched = EULER(shift=2.0)
    unstretched.set_timesteps(sigmas=torch.linspace(1.0, 0.2, 5).tolist())
    ours = stretch_to_terminal(unstretched.sigmas.to(torch.float64), 0.02)
    torch.testing.assert_close(ours.to(torch.float32), scheduler.sigmas, rtol=0, atol=1e-6)

    rewound = torch.tensor([0.6, 0.45, 0.3, 0.15, 0.0], dtype=torch.float64)
    stretched = stretch_to_terminal(rewound, 0.02)
    assert stretched[0] == 0.6 and abs(float(stretched[-2]) - 0.02) < 1e-12 and stretched[-1] == 0.0
    assert bool((stretched[1:] < stretched[:-1]).all())
    single = torch.tensor([0.6, 0.0], dtype=torch.float64)
    assert torch.equal(stretch_to_terminal(single, 0.02), single)  # one step: nothing to stretch

    schedule = NTDMSchedule(NTDMSchedule.Config())
    stages = [StagePlanSpec(steps=2, end=0.3), StagePlanSpec(steps=2, end=0.45), StagePlanSpec(steps=3, end=1.0)]

    def plan(terminal: float | None) -> tuple[torch.Tensor, ...]:
        context = ScheduleContext(
            requested_steps=None,
            default_steps=28,
            default_shift=2.0,
            pipeline_sigmas=lambda steps: torch.zeros(steps + 1),
            terminal_sigma=terminal,
        )
        return schedule.plan(stages, context).sigmas

    plain, stretched_plan = plan(None), plan(0.02)
    assert all(torch.equal(a, b) for a, b in zip(plain[:2], stretched_plan[:2], strict=True))
    assert stretched_plan[2][0] == plain[2][0] and abs(float(stretched_plan[2][-2]) - 0.02) < 1e-7
