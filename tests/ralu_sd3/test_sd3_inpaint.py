"""StableDiffusion3InpaintPipeline under the SD3 adapter's recipes (`ralu_core.testing.inpaint`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import pytest
import torch

from ralu_core.errors import UnsupportedPipelineError
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.img2img import input_images
from ralu_core.testing.inpaint import InpaintConformance, box_mask
from ralu_sd3.testing import make_sd3_pipeline


class TestSD3Inpaint(InpaintConformance):
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return diffusers.StableDiffusion3InpaintPipeline.from_pipe(make_sd3_pipeline("sd3-tiny", seed=0))

    def kept_in_output(self, pipe: Any, mask: torch.Tensor) -> torch.Tensor:
        size = (self.height // pipe.vae_scale_factor, self.width // pipe.vae_scale_factor)
        channels = pipe.transformer.config.in_channels
        return torch.nn.functional.interpolate(mask, size=size).expand(-1, channels, -1, -1) == 0


def test_an_inpainting_transformer_that_reads_the_mask_as_channels_is_refused_by_name() -> None:
    plain = make_sd3_pipeline("sd3-tiny", seed=0)
    config = dict(plain.transformer.config)
    config["in_channels"] = 33  # SD3's inpainting models: latents, mask and masked image, per token
    transformer = diffusers.SD3Transformer2DModel.from_config(config)
    pipe = diffusers.StableDiffusion3InpaintPipeline.from_pipe(plain, transformer=transformer)
    fast = accelerate(pipe, "ralu-sd3-3x")
    with pytest.raises(UnsupportedPipelineError, match="reads 33 channels"):
        fast("a cat", image=input_images(1, 64, 64), mask_image=box_mask(1, 64, 64, 0, 0, 0.5, 1), height=64, width=64)


def test_the_baseline_decodes_as_the_inpaint_pipeline_does() -> None:
    """StableDiffusion3InpaintPipeline decodes without the VAE's shift factor; so does its baseline."""
    pipe = TestSD3Inpaint().fresh()
    call = {"prompt": "a", "image": input_images(1, 64, 64), "mask_image": box_mask(1, 64, 64, 0.25, 0, 0.75, 1)}
    call |= {"height": 64, "width": 64, "num_inference_steps": 2, "max_sequence_length": 8, "output_type": "pt"}
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    ours = accelerate(pipe, "sd3-baseline")(**call, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(ours, plain)
