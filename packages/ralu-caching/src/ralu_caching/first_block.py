"""`first-block`: skip the remaining blocks while the first block's output barely changes (block level).

The first-block cache (ParaAttention; diffusers' ``FirstBlockCacheConfig``) runs the first transformer
block at every step and compares its residual (output minus input) with the one of the last step that
ran every block; below a relative threshold, the other blocks are skipped and their cached residual is
added instead. diffusers' implementation decides once for the whole batch (so an image's result
depends on the other images in its batch) and fails on SD3, whose last block returns no text stream.
This one decides per image: every image gets exactly the result it would get alone; the remaining
blocks are skipped when every image of the evaluation agrees. Its state lives in the engine's cache
contexts, so it is never shared by CFG branches or image groups, and is dropped at each new token set.
Its hooks live in `ralu_caching.first_block_hooks`, imported when the cache attaches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ralu_caching.stats import ReuseCounter
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import FeatureCache


def _check_threshold(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 < value <= 10.0:
        raise ConfigFieldError("threshold", f"must be in (0, 10] (a relative change), got {value}")


@attrs.frozen(kw_only=True)
class FirstBlockConfig:
    threshold: float = attrs.field(default=0.12, validator=_check_threshold)
    """Relative mean absolute change of the first block's residual below which an image reuses the rest."""


class FirstBlockCache(FeatureCache):
    """Per image, skip the blocks after the first while its residual changes less than `threshold`."""

    name: ClassVar[str] = "first-block"
    keeps_block_features: ClassVar[bool] = True
    Config = FirstBlockConfig

    def __init__(self, config: FirstBlockConfig | None = None) -> None:
        super().__init__(config)
        self.counter = ReuseCounter()

    def reset(self) -> None:
        self.counter.clear()

    def planned_steps(self, steps: int) -> None:
        return None  # adaptive: `ralu bench` measures it

    def measured_reuse(self) -> tuple[int, int]:
        return self.counter.reused, self.counter.total

    def attach(self, denoiser: Any) -> Any:
        from ralu_caching.first_block_hooks import first_block_installed

        return first_block_installed(denoiser, self.config.threshold, self.counter)
