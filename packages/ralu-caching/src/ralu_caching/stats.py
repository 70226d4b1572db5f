"""Counting what an adaptive cache reused, for `ralu bench` to report next to the FLOPs."""

from __future__ import annotations

import attrs


@attrs.define
class ReuseCounter:
    """Evaluations (one per image and model call) and how many of them reused cached work."""

    reused: int = 0
    total: int = 0

    def record(self, *, reused: int, total: int) -> None:
        self.reused += reused
        self.total += total

    def clear(self) -> None:
        self.reused = self.total = 0

    @property
    def share(self) -> float | None:
        return self.reused / self.total if self.total else None
