"""FLUX's variant pipelines that the adapter does not drive yet are refused by name, with what they add and what to
use instead, before any work (`ralu_core.testing.conformance.VariantsRefused`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers

from ralu_core.testing.conformance import VariantsRefused
from ralu_flux.testing import make_flux_pipeline


class TestFluxVariants(VariantsRefused):
    recipe = "ralu-flux-7x"
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)

    def variant_components(self, variant: str, pipe: Any) -> dict[str, Any]:
        if "ControlNet" not in variant:
            return {}
        config = pipe.transformer.config
        controlnet = diffusers.FluxControlNetModel.from_transformer(
            pipe.transformer,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
        )
        return {"controlnet": controlnet}
