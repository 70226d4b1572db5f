"""`taylorseer`: forecast the model's output between full computations (step level).

TaylorSeer (Liu et al., 2025) predicts features at skipped steps with a Taylor expansion whose
derivatives are finite differences of the last full computations. Here the forecast is of the
velocity itself, per token and per element, with Newton's divided differences in sigma (the steps of
a flow-matching schedule are not evenly spaced in sigma, and the velocity is a function of it):
order 1 extrapolates the line through the last two computed velocities, order 2 the parabola through
the last three, and order 0 reuses the last one (the degenerate case: plain reuse, as in FORA). Each
stage starts with `warmup` full computations (its token set and noise level are new), then computes
once every `interval` steps and forecasts the rest. Everything is elementwise, so a forecast for one
token depends on that token's history only: batches equal singles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import attrs
import torch

from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FULL_STEP, FeatureCache, PlannedStep, StageInfo, StepInfo

FORECAST = PlannedStep(runs=False, kind="forecast")


def _check(instance: TaylorSeerConfig) -> None:
    if not 1 <= instance.interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (no forecasting) to 100, got {instance.interval}")
    if instance.order not in (0, 1, 2):
        raise ConfigFieldError("order", f"must be 0, 1 or 2, got {instance.order}")
    if not instance.order + 1 <= instance.warmup <= 1000:
        raise ConfigFieldError(
            "warmup",
            f"order {instance.order} needs at least {instance.order + 1} full computations per stage before "
            f"forecasting, got {instance.warmup}",
        )


@attrs.frozen(kw_only=True)
class TaylorSeerConfig:
    interval: int = 2
    """After the warm-up, one full computation every `interval` steps (the others are forecast)."""
    order: int = 1
    """0: reuse the last computed velocity; 1: linear extrapolation in sigma; 2: quadratic."""
    warmup: int = 2
    """Full computations at the start of every stage (at least order + 1)."""

    def __attrs_post_init__(self) -> None:
        _check(self)


def computes(step: int, warmup: int, interval: int) -> bool:
    """Whether step `step` of a stage runs the model: the warm-up, then the last of every `interval` steps."""
    return step < warmup or (step - warmup) % interval == interval - 1


def newton_forecast(sigmas: list[float], values: list[torch.Tensor], sigma: float) -> torch.Tensor:
    """Evaluate at `sigma` the polynomial through (sigmas[i], values[i]), newest first (Newton's form)."""
    table = [v.float() for v in values]
    coefficients = [table[0]]
    for level in range(1, len(table)):
        table = [(table[i] - table[i + 1]) / (sigmas[i] - sigmas[i + level]) for i in range(len(table) - 1)]
        coefficients.append(table[0])
    result = coefficients[-1]
    for k in range(len(coefficients) - 2, -1, -1):
        result = coefficients[k] + (sigma - sigmas[k]) * result
    return result


class TaylorSeerCache(FeatureCache):
    """Forecast the velocity (orders 0-2, in sigma) between full computations every `interval` steps."""

    name: ClassVar[str] = "taylorseer"
    Config = TaylorSeerConfig
    forecasts: ClassVar[bool] = True

    def __init__(self, config: TaylorSeerConfig | None = None) -> None:
        super().__init__(config)
        self._sigmas: list[float] = []
        self._values: list[torch.Tensor] = []

    def reset(self) -> None:
        self._sigmas, self._values = [], []

    def begin_stage(self, stage: StageInfo) -> None:
        self.reset()  # a new token set at a new noise level: the history does not extrapolate across it

    def predict(self, step: StepInfo, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        config: TaylorSeerConfig = self.config
        if computes(step.step, config.warmup, config.interval) or not self._values:
            velocity = compute()
            self._sigmas.insert(0, step.sigma)
            self._values.insert(0, velocity)
            del self._sigmas[config.order + 1 :], self._values[config.order + 1 :]
            return velocity
        forecast = newton_forecast(self._sigmas, self._values, step.sigma)
        return forecast.to(self._values[0].dtype)

    def check_stages(self, steps: Mapping[int, int]) -> list[str]:
        idle = {stage: count for stage, count in steps.items() if self.config.warmup >= count}
        if not idle:
            return []
        shown = ", ".join(f"{stage} ({count} steps)" for stage, count in idle.items())
        busy = sorted(set(steps) - set(idle))
        way_out = f"limit it with `stages: {busy}`" if busy else "use it in longer stages"
        return [
            f"a warm-up of {self.config.warmup} full computations per stage leaves nothing to forecast in stage(s) "
            f"{shown}, so it would save nothing there; {way_out}, or lower `warmup`"
        ]

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        config: TaylorSeerConfig = self.config
        return tuple(FULL_STEP if computes(j, config.warmup, config.interval) else FORECAST for j in range(steps))
