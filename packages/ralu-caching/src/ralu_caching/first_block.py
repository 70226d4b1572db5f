"""`first-block`: skip the remaining blocks while the first block's output barely changes (block level).

The first-block cache (ParaAttention; diffusers' ``FirstBlockCacheConfig``) runs the first transformer
block at every step and compares its residual (output minus input) with the one of the last step that
ran every block; below a relative threshold, the other blocks are skipped and their cached residual is
added instead. It is DBCache's F1B0 case and runs on `db-cache`'s hooks (one front block, no back block).
diffusers' implementation decides once for the whole batch (so an image's result depends on the other
images in its batch) and fails on SD3, whose last block returns no text stream. This one decides per
image: every image gets exactly the result it would get alone; the remaining blocks are skipped when
every image of the evaluation agrees. Its state lives in the engine's cache contexts, so it is never
shared by CFG branches or image groups, and is dropped at each new token set.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ralu_caching.db_cache import DBCache, DBCacheConfig, check_threshold


@attrs.frozen(kw_only=True)
class FirstBlockConfig:
    threshold: float = attrs.field(default=0.12, validator=check_threshold)
    """Relative mean absolute change of the first block's residual below which an image reuses the rest."""


class FirstBlockCache(DBCache):
    """Per image, skip the blocks after the first while its residual changes less than `threshold`."""

    name: ClassVar[str] = "first-block"
    Config: ClassVar[type[Any]] = FirstBlockConfig

    def settings(self) -> DBCacheConfig:
        return DBCacheConfig(front=1, back=0, threshold=self.config.threshold)
