"""FluxControlNetPipeline under the FLUX adapter's recipes (`ralu_core.testing.controlnet`), with one ControlNet,
a Union ControlNet with its mode, and several; XLabs-style ControlNets (an input hint block) are refused. And
FluxControlPipeline (FLUX.1 Canny and Depth), steered by the control image's latents as extra channels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import pytest
import torch

from ralu_core.errors import CallError, UnsupportedPipelineError
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import PROMPTS, cached_attention_outputs, dense_at
from ralu_core.testing.controlnet import ControlImageConformance, ControlNetConformance, PerControlNet
from ralu_core.testing.img2img import Img2ImgConformance, input_images
from ralu_core.testing.inpaint import InpaintConformance
from ralu_flux.adapter import FluxAdapter
from ralu_flux.testing import make_flux_control_pipeline, make_flux_controlnet, make_flux_pipeline, packed_mask


class FluxControlNets(ControlNetConformance):
    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    # guidance_scale: the ControlNet pipeline's default (7.0) is not FluxPipeline's (3.5).
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16, "guidance_scale": 3.5}

    def plain_pipeline(self, pipe: Any) -> Any:
        plain = diffusers.FluxPipeline.from_pipe(pipe)
        plain.set_progress_bar_config(disable=True)
        return plain

    def initial_latents(self, pipe: Any, count: int) -> torch.Tensor:
        tokens = (self.height // 16) * (self.width // 16)
        return torch.randn(count, tokens, 64, generator=torch.Generator().manual_seed(11))


class TestFluxControlNet(FluxControlNets):
    def make_pipeline(self) -> Any:
        tiny = make_flux_pipeline("tiny", seed=0)
        return diffusers.FluxControlNetPipeline.from_pipe(tiny, controlnet=make_flux_controlnet(tiny))


class TestFluxUnionControlNets(FluxControlNets):
    """Two ControlNets at once, one of them a Union ControlNet with its mode (the other given none: -1)."""

    recipes = ("ralu-flux-7x",)
    windows = ({}, {"controlnet_conditioning_scale": [0.4, 1.0], "control_guidance_end": [0.5, 1.0]})
    # FluxControlNetPipeline takes several ControlNets' scales only as a list (a float fails in it; ralu takes both).
    call: ClassVar[Mapping[str, Any]] = {
        **FluxControlNets.call,
        "control_mode": [None, 2],
        "controlnet_conditioning_scale": [1.0, 1.0],
    }

    def make_pipeline(self) -> Any:
        tiny = make_flux_pipeline("tiny", seed=0)
        nets = [make_flux_controlnet(tiny, seed=1), make_flux_controlnet(tiny, seed=2, num_mode=4)]
        return diffusers.FluxControlNetPipeline.from_pipe(tiny, controlnet=diffusers.FluxMultiControlNetModel(nets))

    def control(self, count: int, seed: int = 5) -> Any:
        return PerControlNet(super().control(count, seed), super().control(count, seed + 1))


def test_a_controlnet_that_reads_pixels_through_a_hint_block_is_refused_before_any_work() -> None:
    tiny = make_flux_pipeline("tiny", seed=0)
    net = make_flux_controlnet(tiny, conditioning_embedding_channels=16)
    pipe = diffusers.FluxControlNetPipeline.from_pipe(tiny, controlnet=net)
    with pytest.raises(UnsupportedPipelineError, match=r"input hint block .* ralu drives ControlNets that read VAE"):
        accelerate(pipe, "ras-flux")(prompt=PROMPTS[0], control_image=input_images(1, 64, 96), height=64, width=96)


def test_ras_keeps_the_controlnets_keys_and_values_too_and_agrees_with_the_dense_step() -> None:
    pipe = TestFluxControlNet().make_pipeline()
    kwargs = {
        "prompt": ["a red circle", "a blue square"],
        "generator": [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
        "control_image": input_images(2, 64, 96),
        "height": 64,
        "width": 96,
        "max_sequence_length": 16,
    }
    out = cached_attention_outputs(FluxAdapter(), pipe, kwargs)
    assert torch.equal(out.recorded, out.plain)
    torch.testing.assert_close(out.subset, dense_at(out), rtol=1e-5, atol=1e-5)
    config, net = pipe.transformer.config, pipe.controlnet.config
    layers = config.num_layers + config.num_single_layers + net.num_layers + net.num_single_layers
    width = config.num_attention_heads * config.attention_head_dim
    assert out.cache_bytes == layers * 2 * 2 * 24 * width * 4  # keys and values of the ControlNet's layers too


class TestFluxControl(ControlImageConformance):
    """FluxControlPipeline (FLUX.1 Canny and Depth): the control image's latents as extra channels of every token."""

    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    windows = ({},)
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_control_pipeline(seed=0)


def test_one_controlnet_for_several_conditions_and_control_tensors_of_another_size_are_refused() -> None:
    tiny = make_flux_pipeline("tiny", seed=0)
    union = make_flux_controlnet(tiny, num_mode=4)
    twice = diffusers.FluxControlNetPipeline.from_pipe(
        tiny, controlnet=diffusers.FluxMultiControlNetModel([union, union])
    )
    call = {"prompt": PROMPTS[0], "height": 64, "width": 96, "control_mode": [0, 1]}
    with pytest.raises(UnsupportedPipelineError, match="one ControlNet serves several control images"):
        accelerate(twice, "flux-baseline")(control_image=[input_images(1, 64, 96)] * 2, **call)
    one = diffusers.FluxControlNetPipeline.from_pipe(tiny, controlnet=make_flux_controlnet(tiny))
    with pytest.raises(CallError, match=r"the control image is 32x32 pixels and the call's size 64x96"):
        accelerate(one, "ras-flux")(prompt=PROMPTS[0], control_image=input_images(1, 32, 32), height=64, width=96)


class ControlNetOnAnImage:
    """The ControlNet variants that start from an input image: their control image comes with every call."""

    baseline = "flux-baseline"
    recipes = ("ralu-flux-7x", "ras-flux")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def run_from_image(self, pipe: Any, recipe: Any, prompts: list[str], seeds: Any, **extra: Any) -> Any:
        extra.setdefault("control_image", input_images(1, 64, 96, seed=12))  # one for every image
        return super().run_from_image(pipe, recipe, prompts, seeds, **extra)  # type: ignore[misc]


class TestFluxControlNetImg2Img(ControlNetOnAnImage, Img2ImgConformance):
    def make_pipeline(self) -> Any:
        tiny = make_flux_pipeline("tiny", seed=0)
        return diffusers.FluxControlNetImg2ImgPipeline.from_pipe(tiny, controlnet=make_flux_controlnet(tiny))


class TestFluxControlNetInpaint(ControlNetOnAnImage, InpaintConformance):
    def make_pipeline(self) -> Any:
        tiny = make_flux_pipeline("tiny", seed=0)
        return diffusers.FluxControlNetInpaintPipeline.from_pipe(tiny, controlnet=make_flux_controlnet(tiny))

    def kept_in_output(self, pipe: Any, mask: torch.Tensor) -> torch.Tensor:
        return packed_mask(pipe, mask, self.height, self.width) == 0


@pytest.mark.parametrize("variant", [TestFluxControlNetImg2Img, TestFluxControlNetInpaint])
def test_the_control_image_steers_the_variants_that_start_from_an_image(variant: Any) -> None:
    case = variant()
    pipe = case.fresh()
    for recipe in ("ralu-flux-7x", "ras-flux"):
        ours = case.run_from_image(pipe, recipe, [PROMPTS[0]], 3)
        other = case.run_from_image(pipe, recipe, [PROMPTS[0]], 3, control_image=input_images(1, 64, 96, seed=13))
        assert (other - ours).abs().max() > 1e-3, f"{variant.__name__}, {recipe}: the control image changed nothing"
