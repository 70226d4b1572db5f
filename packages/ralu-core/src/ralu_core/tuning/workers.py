"""The processes a tune's evaluation is split over (``accelerate launch`` / ``torchrun``, as ``generate --prompts``).

Every process makes the same decisions, so the split is by sample: a process makes the baseline's images of the
samples it owns and scores every candidate on them; after each batch of scores the processes exchange what they
measured, and all of them go on with every score. No image crosses processes, each sample's images are made by
one process with its own seed, so the result is the one a single process gets.
"""

from __future__ import annotations

from typing import Any, Protocol


class Workers(Protocol):
    index: int
    count: int

    def exchange(self, mine: Any) -> list[Any]:
        """Every process's `mine`, in process order (a collective: every process calls it)."""
        ...


class OneProcess:
    index = 0
    count = 1

    def exchange(self, mine: Any) -> list[Any]:
        return [mine]
