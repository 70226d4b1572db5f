"""`deepcache`: DeepCache's idea on the blocks of a diffusion transformer (block level).

DeepCache (Ma et al., 2024) observes that a U-Net's deep features change slowly between steps: it
recomputes the shallow layers every step and reuses the deep ones from the last full step. A DiT has
no U-shape, but its middle blocks play the same role: here the first `head` and last `tail` blocks run
at every step, and the middle blocks' contribution (their output minus their input, for the image and
the text stream) is computed at full steps and added at the others. A full step comes at every stage
start (the engine resets the state when the token set changes) and then every `interval` evaluations.
The schedule is fixed, so its FLOPs are counted exactly, and each image's result is the one it would
get alone. (For U-Net pipelines ralu-caching uses the `DeepCache` package itself.)

The hooks that do it live in `ralu_caching.deepcache_hooks`, imported when the cache attaches: registering
and validating the cache imports no diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import attrs

from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FULL_STEP, FeatureCache, PlannedStep


def _check(instance: DeepCacheConfig) -> None:
    if not 1 <= instance.interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (every step full) to 100, got {instance.interval}")
    for field in ("head", "tail"):
        if not 1 <= getattr(instance, field) <= 64:
            raise ConfigFieldError(field, f"must be from 1 to 64 blocks, got {getattr(instance, field)}")


@attrs.frozen(kw_only=True)
class DeepCacheConfig:
    interval: int = 3
    """A full evaluation every `interval` evaluations (from each stage start); the others reuse the middle."""
    head: int = 1
    """Blocks at the start that run at every step."""
    tail: int = 1
    """Blocks at the end that run at every step."""

    def __attrs_post_init__(self) -> None:
        _check(self)


def full_step(step: int, interval: int) -> bool:
    """Whether evaluation `step` of a stage (0 = the first) computes every block."""
    return step % interval == 0


class DeepCacheDiT(FeatureCache):
    """Run the first and last blocks every step; reuse the middle blocks' contribution between full steps."""

    name: ClassVar[str] = "deepcache"
    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"interval": (2, 3)}
    keeps_block_features: ClassVar[bool] = True
    Config = DeepCacheConfig

    def attach(self, denoiser: Any) -> Any:
        from ralu_caching.deepcache_hooks import deepcache_installed

        return deepcache_installed(denoiser, self.config)

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        reused = PlannedStep(reuse=self._skip_middle, kind="middle blocks reused")
        return tuple(FULL_STEP if full_step(j, self.config.interval) else reused for j in range(steps))

    def _skip_middle(self, denoiser: Any) -> AbstractContextManager[None]:
        """On a (meta-device) model: what a reusing step runs, for counting (the middle blocks pass through)."""
        from ralu_caching.deepcache_hooks import middle_skipped

        return middle_skipped(denoiser, self.config)
