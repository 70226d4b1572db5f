"""`velocity-forecast`: forecast the model's output velocity between full computations (step level).

The control for `taylorseer`, not TaylorSeer itself. TaylorSeer (Liu et al., 2025) forecasts features inside
the blocks, before their gates, and recomputes modulation and gates at every step (see `taylorseer`); this
cache forecasts the velocity, after the timestep modulation and after CFG, per token and per element, with
Newton's divided differences in sigma (the steps of a flow-matching schedule are not evenly spaced in sigma,
and the velocity is a function of it): order 1 extrapolates the line through the last two computed
velocities, order 2 the parabola through the last three, and order 0 reuses the last one (plain reuse, as
in FORA). It skips the whole model at a forecast step, so it saves more FLOPs than the published method at
the same settings, and it loses far more quality (docs/caching.md). Each stage starts with `warmup` full
computations (its token set and noise level are new), then computes once every `interval` steps and
forecasts the rest. Everything is elementwise, so batches equal singles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from ralu_caching.forecast_schedule import check_forecast_settings, computes, warmup_problems
from ralu_core.strategies.base import FULL_STEP, FeatureCache, PlannedStep, StageInfo, StepInfo

FORECAST = PlannedStep(runs=False, kind="forecast")


@attrs.frozen(kw_only=True)
class VelocityForecastConfig:
    interval: int = 2
    """After the warm-up, one full computation every `interval` steps (the others are forecast)."""
    order: int = 1
    """0: reuse the last computed velocity; 1: linear extrapolation in sigma; 2: quadratic."""
    warmup: int = 2
    """Full computations at the start of every stage (at least order + 1)."""

    def __attrs_post_init__(self) -> None:
        check_forecast_settings(self.interval, self.order, self.warmup)


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


class VelocityForecastCache(FeatureCache):
    """Forecast the velocity (orders 0-2, in sigma) between full computations every `interval` steps."""

    name: ClassVar[str] = "velocity-forecast"
    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"interval": (2, 3)}
    Config = VelocityForecastConfig
    forecasts: ClassVar[bool] = True

    def __init__(self, config: VelocityForecastConfig | None = None) -> None:
        super().__init__(config)
        self._sigmas: list[float] = []
        self._values: list[torch.Tensor] = []

    def reset(self) -> None:
        self._sigmas, self._values = [], []

    def begin_stage(self, stage: StageInfo) -> None:
        self.reset()  # a new token set at a new noise level: the history does not extrapolate across it

    def predict(self, step: StepInfo, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        config: VelocityForecastConfig = self.config
        if computes(step.step, config.warmup, config.interval) or not self._values:
            velocity = compute()
            self._sigmas.insert(0, step.sigma)
            self._values.insert(0, velocity)
            del self._sigmas[config.order + 1 :], self._values[config.order + 1 :]
            return velocity
        forecast = newton_forecast(self._sigmas, self._values, step.sigma)
        return forecast.to(self._values[0].dtype)

    def check_stages(self, steps: Mapping[int, int]) -> list[str]:
        return warmup_problems(self.config.warmup, steps)

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        config: VelocityForecastConfig = self.config
        return tuple(FULL_STEP if computes(j, config.warmup, config.interval) else FORECAST for j in range(steps))
