"""FluxFillPipeline under the FLUX adapter's recipes: image-to-image's guarantees (`ralu_core.testing.img2img`) with
a mask, and the conditioning channels at half resolution made as the pipeline makes them at half size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
import torch

from ralu_core.errors import CallError
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.sampling.tokens import TokenState, downsample_area, downsample_nearest
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


def prepared_fill(pipe: Any, **extra: Any) -> Any:
    """A prepared FluxFillPipeline call on a 64 x 96 image, its noise drawn (which makes its conditioning)."""
    height, width = 64, 96
    kwargs = {"prompt": "a", "image": input_images(1, height, width), "height": height, "width": width}
    kwargs |= {"mask_image": box_mask(1, height, width, 0.25, 0.1, 0.7, 0.65), "max_sequence_length": 16}
    kwargs |= {"generator": torch.Generator().manual_seed(0), **extra}
    call: Any = FluxAdapter().bind(pipe, 1, (), kwargs).prepare()  # type: ignore[misc]
    call.initial_noise()
    return call


def test_the_half_resolution_channels_are_the_pipelines_own_at_half_size() -> None:
    pipe = make_flux_fill_pipeline(seed=0)
    height, width, latents = 64, 96, 16 * 4
    mask = box_mask(1, height, width, 0.25, 0.1, 0.7, 0.65)
    call = prepared_fill(pipe)
    full_state = TokenState.full_resolution(torch.zeros(1, 24, latents), call.grid)
    full, half = call.token_channels(full_state), call.token_channels(downsample_nearest(full_state))
    processed = pipe.mask_processor.preprocess(mask, height=height, width=width)
    # At full resolution: exactly what the pipeline concatenates (its own prepare_mask_latents).
    packed, _ = pipe.prepare_mask_latents(
        processed, torch.zeros(1, 16, 8, 12), 1, 16, 1, height, width, torch.float32, torch.device("cpu"), None
    )
    assert torch.equal(full[..., latents:], packed)
    # At half resolution: the mask packed as the pipeline packs a half-size mask, the masked image's latents
    # averaged over 2 x 2 latent pixels.
    packed_half, _ = pipe.prepare_mask_latents(
        torch.nn.functional.avg_pool2d(processed, 2),
        torch.zeros(1, 16, 4, 6),
        1,
        16,
        1,
        height // 2,
        width // 2,
        torch.float32,
        torch.device("cpu"),
        None,
    )
    assert torch.equal(half[..., latents:], packed_half)
    averaged = downsample_area(TokenState.full_resolution(full[..., :latents], call.grid)).values
    assert torch.equal(half[..., :latents], averaged)


def test_conditioning_given_packed_gives_the_same_channels_at_both_levels_and_recipes_run() -> None:
    """`masked_image_latents` (the packed masked image and mask) with `latents` and no image: the mask is unpacked to
    pixels for the half-resolution level, so both levels equal those made from the image and the mask. (diffusers'
    own FluxFillPipeline accepts these arguments in its checks, then fails preprocessing the missing image.)"""
    pipe = make_flux_fill_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    made = prepared_fill(pipe)
    conditioning = made.token_channels(made_state(made))
    latents = torch.randn(1, 24, 64, generator=torch.Generator().manual_seed(2))
    given = prepared_fill(pipe, image=None, mask_image=None, masked_image_latents=conditioning, latents=latents)
    for state in (made_state(made), downsample_nearest(made_state(made))):
        assert torch.equal(given.token_channels(state), made.token_channels(state))
    call = {"prompt": "a", "masked_image_latents": conditioning, "latents": latents}
    call |= {"height": 64, "width": 96, "max_sequence_length": 16, "output_type": "latent"}
    for recipe in ("flux-baseline", "ralu-flux-7x", "ras-flux"):
        assert torch.isfinite(accelerate(pipe, recipe)(**call, generator=torch.Generator().manual_seed(1)).images).all()
    with pytest.raises(CallError, match="starts from `latents`: give them too"):
        accelerate(pipe, "ralu-flux-7x")(**{**call, "latents": None})


def made_state(call: Any) -> TokenState:
    return TokenState.full_resolution(torch.zeros(1, call.grid.num_tokens, call.grid.token_dim), call.grid)
