"""`db-cache`: cache-dit's DBCache (dual block cache) on a diffusion transformer's blocks (block level).

The first `front` blocks (Fn) run at every step; the relative mean absolute change of their residual (their
output minus the model's first block input, image stream) since the image's last full step decides, per
image, whether the middle blocks run or their cached residual (the last middle block's output minus the front
blocks' output at that full step) is added; the last `back` blocks (Bn) always run, a calibrator that
corrects what the reused middle leaves. `warmup` evaluations at each stage start always compute; a cap on
the evaluations reused in a row (`max_consecutive`) and in all (`max_cached`) forces a full one. With
`residual_order` 1 or 2 the reused residual is TaylorSeer's forecast of it (cache-dit's calibrator): finite
differences of the residuals of an image's last full evaluations over their distance in evaluations. ralu's
`first-block` is the F1B0 case (one front block, no back block, no warm-up or caps). Decisions are per image,
so every image gets what it would get alone; the middle is skipped when every image of an evaluation agrees.
Adaptive: `ralu flops` counts it as full and `ralu bench` reports the share reused.

The hooks live in `ralu_caching.db_cache_hooks`, imported when the cache attaches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ralu_caching.stats import ReuseCounter
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FeatureCache


def check_threshold(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 < value <= 10.0:
        raise ConfigFieldError("threshold", f"must be in (0, 10] (a relative change), got {value}")


def _check_count(low: int) -> Any:
    def check(instance: Any, attribute: Any, value: int | None) -> None:
        if value is not None and not low <= value <= 1000:
            raise ConfigFieldError(attribute.name, f"must be from {low} to 1000, got {value}")

    return check


def _check_order(instance: Any, attribute: Any, value: int) -> None:
    if value not in (0, 1, 2):
        raise ConfigFieldError("residual_order", f"must be 0 (plain reuse), 1 or 2 (TaylorSeer), got {value}")


@attrs.frozen(kw_only=True)
class DBCacheConfig:
    front: int = attrs.field(default=1, validator=_check_count(1))
    """Fn: blocks at the start that always run; their residual decides."""
    back: int = attrs.field(default=0, validator=_check_count(0))
    """Bn: blocks at the end that always run after the middle (computed or reused)."""
    threshold: float = attrs.field(default=0.12, validator=check_threshold)
    """Relative mean absolute change of the front residual below which an image reuses the middle."""
    warmup: int = attrs.field(default=0, validator=_check_count(0))
    """Evaluations at the start of each stage that always compute."""
    max_cached: int | None = attrs.field(default=None, validator=_check_count(1))
    """Most evaluations an image may reuse in a stage; None: no cap."""
    max_consecutive: int | None = attrs.field(default=None, validator=_check_count(1))
    """Most evaluations an image may reuse in a row; None: no cap."""
    residual_order: int = attrs.field(default=0, validator=_check_order)
    """0: the cached residual is reused as it is; 1 or 2: TaylorSeer on it (cache-dit's calibrator), forecast
    from the finite differences of its last full evaluations over their distance in evaluations."""


class DBCache(FeatureCache):
    """Per image, reuse the middle blocks' residual while the front blocks' residual barely changes."""

    name: ClassVar[str] = "db-cache"
    keeps_block_features: ClassVar[bool] = True
    Config: ClassVar[type[Any]] = DBCacheConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.counter = ReuseCounter()

    def settings(self) -> DBCacheConfig:
        """The DBCache settings this cache runs with."""
        return self.config  # type: ignore[no-any-return]

    def reset(self) -> None:
        self.counter.clear()

    def planned_steps(self, steps: int) -> None:
        return None  # adaptive: `ralu bench` measures it

    def measured_reuse(self) -> tuple[int, int]:
        return self.counter.reused, self.counter.total

    def attach(self, denoiser: Any) -> Any:
        from ralu_caching.db_cache_hooks import db_cache_installed

        return db_cache_installed(denoiser, self.settings(), self.counter)
