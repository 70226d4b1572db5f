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
        ({"shift_terminal": 0.02}, "a terminal sigma of 0.02"),
        ({"invert_sigmas": True}, "inverted sigmas"),
        ({"use_karras_sigmas": True, "shift_terminal": 0.1}, "Karras sigmas, a terminal sigma of 0.1"),
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
        assert scheduler_problems(None, schedule, "r") == []
