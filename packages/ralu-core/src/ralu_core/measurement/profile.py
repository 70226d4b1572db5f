"""What counting FLOPs asks of a model family: a full-size architecture's profile (`FlopsProfile`), and the
adapter capability that gives it (`CountsFlops`)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from ralu_core.errors import RaluError
from ralu_core.measurement.flops import FlopCount
from ralu_core.sampling.contract import ModelAdapter
from ralu_core.sampling.tokens import TokenGrid


class FlopsProfile(abc.ABC):
    """A full-size architecture whose FLOPs can be counted without weights (meta device)."""

    name: str
    baseline_steps: int
    text_tokens: int

    @abc.abstractmethod
    def grid(self, height: int, width: int) -> TokenGrid:
        """The full-resolution token grid for an image size (validated like a call)."""

    @abc.abstractmethod
    def forward(
        self,
        image_tokens: int,
        reuse: Callable[[Any], AbstractContextManager[None]] | None = None,
        attended_tokens: int | None = None,
    ) -> FlopCount:
        """One transformer evaluation on `image_tokens` image tokens (batch 1, text tokens included). `reuse`,
        given the meta-device model, installs a cache's hooks for a step that reuses part of the work; the
        count is then of what that step really runs. `attended_tokens`: how many image tokens its attention
        sees (a RAS sparse step: the inactive ones through cached keys and values); None: `image_tokens`."""

    @abc.abstractmethod
    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        """One VAE decode of a latent of this size (batch 1)."""

    def text_encoders(self) -> FlopCount | None:
        """The text encoders' passes for one prompt (left out of ralu's counts; the RALU paper counts them);
        None where the profile does not know them."""
        return None

    def without_guidance_batch(self) -> FlopsProfile:
        """The same architecture counted with one transformer pass per step where its pipeline runs a CFG batch of
        two (the RALU paper counts SD3.5-Large so); itself where there is none."""
        return self


@runtime_checkable
class CountsFlops(Protocol):
    """Counts FLOPs of full-size architectures on the meta device (``ralu flops``, ``ralu bench``)."""

    architectures: ClassVar[tuple[str, ...]]

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        """Counting profile for a known architecture name or a local pipeline directory."""
        ...

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        """Counting profile for a loaded pipeline's architecture, for calls made with `call_kwargs`."""
        ...


def architectures(adapter: ModelAdapter) -> tuple[str, ...]:
    """The full-size architectures `adapter` counts by name (none where it counts no FLOPs)."""
    counts = adapter if isinstance(adapter, CountsFlops) else None
    return tuple(counts.architectures) if counts else ()


def counting(adapter: ModelAdapter) -> CountsFlops:
    """`adapter` as a FLOPs counter; a RaluError where it counts none."""
    counts = adapter if isinstance(adapter, CountsFlops) else None
    if counts is None:
        raise RaluError(f"the {adapter.name!r} adapter counts no FLOPs; ralu counts those of the DiT adapters")
    return counts
