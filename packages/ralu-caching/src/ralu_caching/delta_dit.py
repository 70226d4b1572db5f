"""`delta-dit`: Δ-DiT's Δ-Cache on a range of transformer blocks (Chen et al., 2024; block level).

Δ-DiT observes that a DiT's front blocks shape the outline and its rear blocks the details, and caches
the *deviation* a range of blocks adds (its output minus its input, per stream) rather than the output
itself: at a reusing step the range is skipped and the cached deviation is added to the range's current
input (Δ-Cache), so what the blocks before it computed this step carries through. Early in sampling the
rear blocks are cached, from the boundary step `b` on the front blocks. The published method counts a
cached range of `Nc` blocks, a refresh every `N` steps and the boundary `b`; here `cached_blocks` (Nc,
default the rear two thirds, which on FLUX are exactly its 38 single-stream blocks, as in the FLUX Δ-DiT
of TaylorSeer's official code that the RALU paper's comparison used), `interval` (N), `warmup` (full steps
at each stage start; 1 as in that code) and `boundary` (b, a step index within each stage; none: the rear
blocks throughout). Per image (everything is elementwise) and per CFG branch; the state starts again at
every new token set. The schedule is fixed, so `ralu flops` counts it exactly.

The hooks live in `ralu_caching.delta_dit_hooks`, imported when the cache attaches or is counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, ClassVar

import attrs

from ralu_caching.forecast_schedule import computes, warmup_problems
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FULL_STEP, FeatureCache, PlannedStep

REAR, FRONT = "rear", "front"


def _check(instance: DeltaDiTConfig) -> None:
    if not 1 <= instance.interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (no caching) to 100, got {instance.interval}")
    if not 1 <= instance.warmup <= 1000:
        raise ConfigFieldError(
            "warmup", f"must be from 1 (the stage's first step is full) to 1000, got {instance.warmup}"
        )
    if instance.cached_blocks is not None and not 1 <= instance.cached_blocks <= 1000:
        raise ConfigFieldError("cached_blocks", f"must be at least 1 block, got {instance.cached_blocks}")
    if instance.boundary is not None and not 0 <= instance.boundary <= 1000:
        raise ConfigFieldError(
            "boundary", f"must be a step index within the stage (0 or more), got {instance.boundary}"
        )


@attrs.frozen(kw_only=True)
class DeltaDiTConfig:
    interval: int = 2
    """After the warm-up, one full step every `interval` steps (N); the others reuse the range's deviation."""
    warmup: int = 1
    """Full steps at the start of every stage (its token set is new)."""
    cached_blocks: int | None = None
    """Blocks in the cached range (Nc); None: two thirds of the model's blocks, rounded."""
    boundary: int | None = None
    """The step (within each stage) from which the front blocks are cached instead of the rear (b); None: never."""

    def __attrs_post_init__(self) -> None:
        _check(self)


def cached_range(blocks: int, cached: int | None, which: str) -> range:
    """Indices of the cached blocks: the first (front) or last (rear) `cached` of `blocks`, at least one
    block left to run; ValueError where the model has too few."""
    count = round(blocks * 2 / 3) if cached is None else cached
    if not 1 <= count < blocks:
        raise ValueError(f"delta-dit caches {count} of {blocks} blocks; it needs at least one block left to run")
    return range(0, count) if which == FRONT else range(blocks - count, blocks)


class DeltaDiTCache(FeatureCache):
    """Skip a range of blocks between full steps and add the deviation it made at the last one."""

    name: ClassVar[str] = "delta-dit"
    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"interval": (2, 3)}
    keeps_block_features: ClassVar[bool] = True
    Config = DeltaDiTConfig

    def range_at(self, step: int) -> str:
        boundary = self.config.boundary
        return REAR if boundary is None or step < boundary else FRONT

    def check_stages(self, steps: Mapping[int, int]) -> list[str]:
        return warmup_problems(self.config.warmup, steps)

    def attach(self, denoiser: Any) -> Any:
        from ralu_caching.delta_dit_hooks import delta_cache_installed

        return delta_cache_installed(denoiser, self)

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        config: DeltaDiTConfig = self.config
        planned = []
        for j in range(steps):
            if computes(j, config.warmup, config.interval):
                planned.append(FULL_STEP)
            else:
                which = self.range_at(j)
                planned.append(PlannedStep(reuse=partial(self._skipped, which), kind=f"{which} blocks reused"))
        return tuple(planned)

    def _skipped(self, which: str, denoiser: Any) -> AbstractContextManager[None]:
        """On a (meta-device) model: what a reusing step runs (the range passes its input through), for counting."""
        from ralu_caching.delta_dit_hooks import range_skipped

        return range_skipped(denoiser, self.config.cached_blocks, which)
