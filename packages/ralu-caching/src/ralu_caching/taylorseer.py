"""`taylorseer`: TaylorSeer as published (Liu et al., 2025): features inside the blocks, forecast.

At a full step every block runs and the outputs of its gated branches are kept: in FLUX's double-stream
blocks the image and text attention outputs and the two feed-forward outputs, in its single-stream blocks
the fused attention + MLP projection, in SD3's joint blocks the attention outputs (SD3.5's second attention
too) and the feed-forwards, always before their gates. Which modules those are is adapter knowledge (each
adapter's `block_features`). From the kept values a Taylor series is updated by finite differences, as the
official code does: the k-th factor is the difference of the (k-1)-th factors of the last two full steps
divided by their distance. At a forecast step those modules (and the ones that only feed them) do not run:
their outputs are the series evaluated at the step's distance from the last full step, and everything else
(the timestep embedding, modulation, norms, gates and residual additions, the final projection) runs as
usual, so a forecast step costs that and `ralu flops` counts it.

Distance is the step index (`distance: step`, the official code's), or the sigma of the schedule
(`distance: sigma`, the official code's commented-out alternative; RALU's stages space sigma unevenly).
The schedule is the official one in every stage: `warmup` full steps, then one full step every `interval`.
Derivatives start at the last warm-up step (the official `step > first_enhance - 2`). State is per image
(everything is elementwise) and per CFG branch, and starts again at every change of the token set.

The hooks live in `ralu_caching.taylorseer_hooks`, imported when the cache attaches or is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import attrs

from ralu_caching.forecast_schedule import check_forecast_settings, computes, warmup_problems
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FULL_STEP, AdapterFacts, BlockFeatures, FeatureCache, PlannedStep

DISTANCES = ("step", "sigma")


@attrs.frozen(kw_only=True)
class TaylorSeerConfig:
    interval: int = 3
    """After the warm-up, one full step every `interval` steps (N; the others are forecast)."""
    order: int = 1
    """The Taylor order O: 0 reuses the last features, 1 extrapolates linearly, 2 quadratically."""
    warmup: int = 3
    """Full steps at the start of every stage (W, at least order + 1)."""
    distance: str = "step"
    """What the series is a function of: ``step`` (the step index, as published) or ``sigma``."""

    def __attrs_post_init__(self) -> None:
        check_forecast_settings(self.interval, self.order, self.warmup)
        if self.distance not in DISTANCES:
            raise ConfigFieldError("distance", f"must be one of {', '.join(DISTANCES)}, got {self.distance!r}")


class TaylorSeerCache(FeatureCache):
    """Forecast each block's gated branch outputs with a Taylor series between full steps."""

    name: ClassVar[str] = "taylorseer"
    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"interval": (2, 3), "order": (1, 2)}
    keeps_block_features: ClassVar[bool] = True
    Config = TaylorSeerConfig

    def __init__(self, config: TaylorSeerConfig | None = None) -> None:
        super().__init__(config)
        self._features: Mapping[str, BlockFeatures] | None = None

    def check_adapter(self, adapter: AdapterFacts) -> list[str]:
        if adapter.block_features:
            return []
        return [
            f"'taylorseer' forecasts features inside the transformer blocks, and the {adapter.name!r} adapter does "
            "not declare its blocks' features (block_features); use `deepcache` or `velocity-forecast`"
        ]

    def use_model(self, model: AdapterFacts) -> None:
        self._features = dict(model.block_features)

    def check_stages(self, steps: Mapping[int, int]) -> list[str]:
        return warmup_problems(self.config.warmup, steps)

    def attach(self, denoiser: Any) -> Any:
        from ralu_caching.taylorseer_hooks import forecasting_installed

        return forecasting_installed(denoiser, self.config, self._block_features())

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        config: TaylorSeerConfig = self.config
        forecast = PlannedStep(reuse=self._forecast_counted, kind="forecast from features")
        return tuple(FULL_STEP if computes(j, config.warmup, config.interval) else forecast for j in range(steps))

    def _forecast_counted(self, model: Any) -> AbstractContextManager[None]:
        """On a (meta-device) model: what a forecast step runs, for counting."""
        from ralu_caching.taylorseer_hooks import forecast_counted

        return forecast_counted(model, self._block_features())

    def _block_features(self) -> Mapping[str, BlockFeatures]:
        if self._features is None:
            raise RuntimeError("taylorseer was not told its adapter (accelerate and `ralu flops` do: use_model)")
        return self._features
