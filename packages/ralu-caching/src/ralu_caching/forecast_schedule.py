"""When forecasting caches compute and when they forecast, shared by `taylorseer` and `velocity-forecast`.

The schedule of TaylorSeer's official code: in every stage (its token set is new) the first `warmup` steps
compute fully, then the model computes at the last of every `interval` steps and the others are forecast.
"""

from __future__ import annotations

from collections.abc import Mapping

from ralu_core.errors import ConfigFieldError


def check_forecast_settings(interval: int, order: int, warmup: int) -> None:
    """ConfigFieldError for settings no forecast can run with."""
    if not 1 <= interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (no forecasting) to 100, got {interval}")
    if order not in (0, 1, 2):
        raise ConfigFieldError("order", f"must be 0, 1 or 2, got {order}")
    if not order + 1 <= warmup <= 1000:
        raise ConfigFieldError(
            "warmup",
            f"order {order} needs at least {order + 1} full computations per stage before forecasting, got {warmup}",
        )


def computes(step: int, warmup: int, interval: int) -> bool:
    """Whether step `step` of a stage runs the model: the warm-up, then the last of every `interval` steps."""
    return step < warmup or (step - warmup) % interval == interval - 1


def warmup_problems(warmup: int, steps: Mapping[int, int]) -> list[str]:
    """The stages (index -> step count) in which a warm-up of `warmup` leaves nothing to forecast."""
    idle = {stage: count for stage, count in steps.items() if warmup >= count}
    if not idle:
        return []
    shown = ", ".join(f"{stage} ({count} steps)" for stage, count in idle.items())
    busy = sorted(set(steps) - set(idle))
    way_out = f"limit it with `stages: {busy}`" if busy else "use it in longer stages"
    return [
        f"a warm-up of {warmup} full computations per stage leaves nothing to forecast in stage(s) {shown}, so it "
        f"would save nothing there; {way_out}, or lower `warmup`"
    ]
