"""The FLOPs profile every DiT adapter shares: a RAS sparse step is counted by running the adapter's own
stand-in attention processor on the meta-device model, so the count is of the code that runs."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from ralu_core.measurement.flops import FlopCount
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.kv_store import counting_cached_attention

Reuse = Callable[[Any], AbstractContextManager[None]]


class DiTFlopsProfile(FlopsProfile):
    """`forward` for DiTs; an adapter's profile says how one transformer pass is counted and where RAS's
    keys and values stand in (model knowledge only)."""

    cfg_batch: int = 1
    """Transformer rows per image (2 where the model runs CFG as a batch and the count includes it)."""

    @abc.abstractmethod
    def transformer_forward(self, image_tokens: int, reuse: Reuse | None) -> FlopCount:
        """One transformer pass on `image_tokens` image tokens on the meta device, `reuse` installed."""

    @abc.abstractmethod
    def cached_attention(self) -> tuple[Callable[[Any], Mapping[str, Any]], Callable[..., Any]]:
        """(the model's attention modules by name, the stand-in processor RAS installs in them)."""

    def forward(self, image_tokens: int, reuse: Reuse | None = None, attended_tokens: int | None = None) -> FlopCount:
        if attended_tokens is not None:
            modules, stand_in = self.cached_attention()
            reuse = counting_cached_attention(reuse, modules, stand_in, attended_tokens, image_tokens, self.cfg_batch)
        return self.transformer_forward(image_tokens, reuse)
