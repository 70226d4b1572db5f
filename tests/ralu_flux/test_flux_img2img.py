"""FluxImg2ImgPipeline under the FLUX adapter's recipes (`ralu_core.testing.img2img`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers

from ralu_core.testing.img2img import Img2ImgConformance
from ralu_flux.testing import make_flux_pipeline


class TestFluxImg2Img(Img2ImgConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return diffusers.FluxImg2ImgPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))
