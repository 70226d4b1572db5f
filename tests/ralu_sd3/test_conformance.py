"""The SD3 adapter against the conformance suite every adapter runs (`ralu_core.testing.conformance`). SD3.5's
differences (dual attention, q/k norms) are model knowledge, tested in test_sd3_adapter.py and
test_ras_attention.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import AdapterConformance
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Conformance(AdapterConformance):
    adapter_name = "sd3"
    recipe_plugins = ("sd3",)
    baseline = "sd3-baseline"
    full_size = "sd3-medium"
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-tiny", seed=0)
