"""FluxInpaintPipeline under the FLUX adapter's recipes (`ralu_core.testing.inpaint`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import torch

from ralu_core.testing.inpaint import InpaintConformance
from ralu_flux.testing import make_flux_pipeline, packed_mask


class TestFluxInpaint(InpaintConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return diffusers.FluxInpaintPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))

    def kept_in_output(self, pipe: Any, mask: torch.Tensor) -> torch.Tensor:
        return packed_mask(pipe, mask, self.height, self.width) == 0
