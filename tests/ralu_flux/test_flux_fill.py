"""FluxFillPipeline under the FLUX adapter's recipes: image-to-image's guarantees (`ralu_core.testing.img2img`) with
a mask, and the conditioning channels at half resolution made as the pipeline makes them at half size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ralu_core.sampling.tokens import TokenState, downsample_nearest
from ralu_core.testing.conformance import PROMPTS
from ralu_core.testing.img2img import Img2ImgConformance, input_images
from ralu_core.testing.inpaint import box_mask
from ralu_flux.adapter import FluxAdapter
from ralu_flux.testing import make_flux_fill_pipeline


class TestFluxFill(Img2ImgConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}
    strength = 1.0  # Fill's default: from noise, the image read through its masked latents

    def make_pipeline(self) -> Any:
        return make_flux_fill_pipeline(seed=0)

    def run_from_image(
        self, pipe: Any, recipe: str | None, prompts: list[str], seeds: list[int] | int, **extra: Any
    ) -> Any:
        extra.setdefault("mask_image", box_mask(1, self.height, self.width, 0.25, 0.1, 0.7, 0.65))
        return super().run_from_image(pipe, recipe, prompts, seeds, **extra)

    def test_the_mask_reaches_every_recipe(self) -> None:
        pipe = self.fresh()
        for recipe in (self.baseline, *self.recipes):
            ours = self.run_from_image(pipe, recipe, [PROMPTS[0]], 3)
            other = self.run_from_image(
                pipe, recipe, [PROMPTS[0]], 3, mask_image=box_mask(1, self.height, self.width, 0, 0.5, 1, 1)
            )
            assert (other - ours).abs().max() > 1e-3, f"{recipe}: the mask changed nothing"


def test_the_half_resolution_channels_are_the_pipelines_own_at_half_size() -> None:
    pipe = make_flux_fill_pipeline(seed=0)
    height, width = 64, 96
    image, mask = input_images(1, height, width), box_mask(1, height, width, 0.25, 0.1, 0.7, 0.65)
    call: Any = (
        FluxAdapter()
        .bind(
            pipe,
            1,
            (),
            {
                "prompt": "a",
                "image": image,
                "mask_image": mask,
                "height": height,
                "width": width,
                "max_sequence_length": 16,
                "generator": torch.Generator().manual_seed(0),
            },
        )
        .prepare()
    )  # type: ignore[misc]
    full = TokenState.full_resolution(call.initial_noise(), call.grid)
    conditioning = call.token_channels(full)
    latents = 16 * 4
    # At full resolution: exactly what the pipeline concatenates (its own prepare_mask_latents).
    packed_mask, _ = pipe.prepare_mask_latents(
        pipe.mask_processor.preprocess(mask, height=height, width=width),
        torch.zeros(1, 16, 8, 12),
        1,
        16,
        1,
        height,
        width,
        torch.float32,
        torch.device("cpu"),
        None,
    )
    assert torch.equal(conditioning[..., latents:], packed_mask)
    # At half resolution: the mask packed as the pipeline packs a half-size mask.
    half_mask = torch.nn.functional.avg_pool2d(pipe.mask_processor.preprocess(mask, height=height, width=width), 2)
    packed_half, _ = pipe.prepare_mask_latents(
        half_mask, torch.zeros(1, 16, 4, 6), 1, 16, 1, height // 2, width // 2, torch.float32, torch.device("cpu"), None
    )
    half = call.token_channels(downsample_nearest(full))
    assert torch.equal(half[..., latents:], packed_half)
