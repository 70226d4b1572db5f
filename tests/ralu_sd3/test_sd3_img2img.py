"""StableDiffusion3Img2ImgPipeline under the SD3 adapter's recipes (`ralu_core.testing.img2img`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers

from ralu_core.testing.img2img import Img2ImgConformance
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Img2Img(Img2ImgConformance):
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return diffusers.StableDiffusion3Img2ImgPipeline.from_pipe(make_sd3_pipeline("sd3-tiny", seed=0))
