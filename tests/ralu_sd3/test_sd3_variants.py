"""SD3's variant pipelines that the adapter does not drive yet are refused by name, with what they add and what to
use instead, before any work (`ralu_core.testing.conformance.VariantsRefused`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers

from ralu_core.testing.conformance import VariantsRefused
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Variants(VariantsRefused):
    recipe = "ralu-sd3-3x"
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-tiny", seed=0)

    def variant_components(self, variant: str, pipe: Any) -> dict[str, Any]:
        if "ControlNet" not in variant:
            return {}
        return {"controlnet": diffusers.SD3ControlNetModel.from_transformer(pipe.transformer, num_layers=1)}
