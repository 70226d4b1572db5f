"""An offloaded Lumina-Next pipeline (model CPU offload, group offloading) under the adapter's recipes
(`ralu_core.testing.offload`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.offload import OffloadConformance
from ralu_lumina.testing import make_lumina_pipeline


class TestLuminaOffload(OffloadConformance):
    baseline = "lumina-baseline"
    recipes = ("ralu-lumina-4x", "ras-lumina")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_lumina_pipeline(seed=0)
