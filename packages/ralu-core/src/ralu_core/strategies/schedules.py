"""Built-in timestep schedules: `nt-dm` (RALU's solved multi-stage schedule) and `uniform`.

`uniform` hands the single stage the pipeline's own sigmas, so a baseline recipe reproduces the
pipeline exactly. `nt-dm` gives each stage its own shift and rewinds at each transition, with
(h_1..h_K, c) chosen so that the timesteps actually visited match the base model's training
density; the solution depends only on the steps, the stage ends and the base shift. A recipe may
pin (h_1..h_K, c) instead: the built-in paper recipes pin the published values, because the
objective is so flat in c that a solver's optimum can rewind much deeper than what was measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs
import torch

from ralu_core.errors import CallError, ConfigFieldError
from ralu_core.sampling.ntdm import NTDMSolution, fixed_ntdm, solve_ntdm, unrewound_schedule
from ralu_core.strategies.base import ScheduleContext, SchedulePlan, StagePlanSpec, TimestepSchedule


def _check_ends(stages: Sequence[StagePlanSpec]) -> list[str]:
    problems = []
    previous = 0.0
    for index, stage in enumerate(stages):
        if not previous < stage.end <= 1.0:
            problems.append(
                f"$.stages[{index}].end: stage ends must increase strictly within (0, 1], got {stage.end} "
                f"after {previous}"
            )
        previous = stage.end
    if stages and stages[-1].end != 1.0:
        problems.append(f"$.stages[{len(stages) - 1}].end: the last stage must end at 1.0 (clean data)")
    return problems


MAX_SHIFT = 100.0
"""Timestep shifts above this put every step at pure noise (FLUX and SD3 use about 3)."""


def _shift(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not 0 < value <= MAX_SHIFT:
        raise ConfigFieldError(attribute.name, f"{attribute.name} must be in (0, {MAX_SHIFT:g}], got {value}")


@attrs.frozen(kw_only=True)
class NTDMConfig:
    base_shift: float | None = attrs.field(default=None, validator=_shift)
    """Shift h0 of the base model's timestep density (3.0 for FLUX.1-dev and SD3); default: the pipeline's."""
    shifts: tuple[float, ...] | None = None
    """Per-stage shifts to run instead of the solved ones (a published schedule, or an ablation); give `c` too."""
    c: float | None = None
    """Noise-correlation constant in (0, 1/4] to run instead of the solved one; it sets how far each
    transition rewinds (smaller c: deeper)."""
    rewind: bool = True
    """Rewind toward noise at each transition (NT-DM). False pairs with naive-upsample for ablations."""
    source: str | None = None
    """Where pinned `shifts` and `c` come from (e.g. the paper's table); `ralu schedule` shows it."""

    def __attrs_post_init__(self) -> None:
        if self.rewind and (self.shifts is None) != (self.c is None):
            raise ValueError("give both `shifts` and `c` to fix the schedule, or neither to solve it")
        if not self.rewind and self.c is not None:
            raise ConfigFieldError("c", "c sets the rewind, so it has no effect with `rewind: false`; remove it")
        if self.c is not None and not 0.0 < self.c <= 0.25:
            raise ConfigFieldError(
                "c", f"c must be in (0, 0.25] so that the injected noise covariance stays valid, got {self.c}"
            )
        if self.shifts is not None and not all(0 < s <= MAX_SHIFT for s in self.shifts):
            raise ConfigFieldError("shifts", f"shifts must be in (0, {MAX_SHIFT:g}], got {list(self.shifts)}")
        if self.source is not None and self.shifts is None:
            raise ConfigFieldError("source", "`source` names where pinned `shifts` (and `c`) come from; give them")

    @property
    def mode(self) -> str:
        """``solved`` (by NT-DM), ``pinned`` (given shifts and c) or ``no rewind`` (naive ablations)."""
        if not self.rewind:
            return "no rewind"
        return "solved" if self.shifts is None else "pinned"


class NTDMSchedule(TimestepSchedule):
    """Per-stage shifted schedules with rewinds solved by NT-DM (noise & timestep distribution matching)."""

    name: ClassVar[str] = "nt-dm"
    Config: ClassVar[type[NTDMConfig]] = NTDMConfig
    starts_from_image: ClassVar[bool] = True

    def __init__(self, config: NTDMConfig | None = None) -> None:
        super().__init__(config)
        self._solutions: dict[float, NTDMSolution] = {}

    @property
    def rewinds(self) -> bool:
        return bool(self.config.rewind)

    def check(self, stages: Sequence[StagePlanSpec]) -> list[str]:
        problems = [
            f"$.stages[{i}].steps: the nt-dm schedule needs a step count for every stage"
            for i, s in enumerate(stages)
            if s.steps is None
        ]
        problems += _check_ends(stages)
        shifts = self.config.shifts
        if shifts is not None and len(shifts) != len(stages):
            problems.append(f"$.schedule.shifts: {len(shifts)} shifts given for {len(stages)} stages")
        return problems

    def solution(self, stages: Sequence[StagePlanSpec], base_shift: float) -> NTDMSolution:
        """The schedule this recipe runs (solved, pinned or without rewinds); cached per base shift
        because solving takes a moment."""
        if base_shift not in self._solutions:
            steps = [int(s.steps or 0) for s in stages]
            ends = [s.end for s in stages]
            shifts, c = self.config.shifts, self.config.c
            if not self.config.rewind:
                solved = unrewound_schedule(steps, ends, base_shift, shifts)
            elif shifts is not None and c is not None:
                solved = fixed_ntdm(steps, ends, base_shift, list(shifts), c)
            else:
                solved = solve_ntdm(steps, ends, base_shift)
            self._solutions[base_shift] = solved
        return self._solutions[base_shift]

    def plan(self, stages: Sequence[StagePlanSpec], context: ScheduleContext) -> SchedulePlan:
        solution = self.solution(stages, self.config.base_shift or context.default_shift)
        if context.strength is not None:
            # Image-to-image: the stages run over what `strength` leaves, from the sigma at which the pipeline's
            # own img2img would start at its default steps; each stage keeps its steps, the rewinds their c.
            first = image_start_index(context.default_steps, context.strength)
            start_sigma = float(context.pipeline_sigmas(context.default_steps)[first])
            solution = solution.starting_at(1.0 - start_sigma)
        sigmas = [torch.tensor(stage.sigmas, dtype=torch.float64) for stage in solution.stages()]
        if context.terminal_sigma is not None:
            sigmas[-1] = stretch_to_terminal(sigmas[-1], context.terminal_sigma)
        details = {
            **solution.to_dict(),
            "mode": self.config.mode,
            "source": self.config.source,
            "terminal_sigma": context.terminal_sigma,
        }
        return SchedulePlan(sigmas=tuple(s.to(torch.float32) for s in sigmas), details=details)


def stretch_to_terminal(sigmas: torch.Tensor, terminal: float) -> torch.Tensor:
    """A stage's descending sigmas (ending at 0) with the last one before 0 moved to `terminal`, by the affine map
    of diffusers' ``shift_terminal`` stretch anchored at the stage's first sigma rather than at 1 (the same map where
    the stage starts from pure noise), so that the stage still starts where its transition rewound to. A one-step
    stage, or one starting below `terminal`, is left as it is."""
    if sigmas.numel() < 3 or float(sigmas[0]) <= terminal:
        return sigmas
    start, last = sigmas[0], sigmas[-2]
    stretched = start - (start - sigmas[:-1]) * ((start - terminal) / (start - last))
    return torch.cat([stretched, sigmas[-1:]])


@attrs.frozen(kw_only=True)
class UniformConfig:
    pass


class UniformSchedule(TimestepSchedule):
    """The pipeline's own schedule in one stage (the baseline); honours `num_inference_steps`."""

    name: ClassVar[str] = "uniform"
    Config: ClassVar[type[UniformConfig]] = UniformConfig
    accepts_requested_steps: ClassVar[bool] = True
    follows_pipeline_sigmas: ClassVar[bool] = True
    starts_from_image: ClassVar[bool] = True

    def check(self, stages: Sequence[StagePlanSpec]) -> list[str]:
        if len(stages) != 1:
            return [f"$.stages: the uniform schedule runs exactly one stage, got {len(stages)}"]
        return _check_ends(stages)

    def planned_steps(
        self, stages: Sequence[StagePlanSpec], default_steps: int, strength: float | None = None
    ) -> tuple[int, ...]:
        steps = stages[0].steps or default_steps
        return (steps - image_start_index(steps, strength),)

    def plan(self, stages: Sequence[StagePlanSpec], context: ScheduleContext) -> SchedulePlan:
        steps = context.requested_steps or stages[0].steps or context.default_steps
        first = image_start_index(steps, context.strength)
        sigmas = context.pipeline_sigmas(steps)[first:]
        return SchedulePlan(sigmas=(sigmas,), details={"steps": [steps - first], "skipped": first})


def image_start_index(steps: int, strength: float | None) -> int:
    """How many of `steps` an image-to-image call at `strength` skips: diffusers' rule (``get_timesteps``), so
    that a baseline starts where the pipeline's own img2img starts (any strength above 0 leaves a step)."""
    if strength is None:
        return 0
    if not 0.0 < strength <= 1.0:
        raise CallError(f"strength must lie in (0, 1] (the share of the schedule run), got {strength}")
    return int(max(steps - min(steps * strength, steps), 0))


BUILTIN_SCHEDULES: tuple[type[TimestepSchedule], ...] = (NTDMSchedule, UniformSchedule)
