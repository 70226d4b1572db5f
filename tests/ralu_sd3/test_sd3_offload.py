"""An offloaded SD3 pipeline (model CPU offload, group offloading) under the adapter's recipes
(`ralu_core.testing.offload`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.offload import OffloadConformance
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Offload(OffloadConformance):
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-tiny", seed=0)
