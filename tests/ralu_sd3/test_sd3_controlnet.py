"""StableDiffusion3ControlNetPipeline under the SD3 adapter's recipes (`ralu_core.testing.controlnet`), with one
ControlNet and with several."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import torch

from ralu_core.pipelines.accelerated import accelerate
from ralu_core.testing.conformance import PROMPTS, cached_attention_outputs, dense_at
from ralu_core.testing.controlnet import ControlNetConformance, PerControlNet
from ralu_core.testing.img2img import input_images
from ralu_sd3.adapter import SD3Adapter
from ralu_sd3.testing import make_sd3_controlnet, make_sd3_pipeline


def mean_encoding(pipe: Any) -> Any:
    """The pipeline with its VAE encoding to the mean: the SD3 ControlNet pipeline samples the control latents from
    torch's global generator (not the call's), so in the plain pipeline too a batch's control latents differ from
    single calls'; at the mean they agree."""
    encode = pipe.vae.encode

    def at_the_mean(*args: Any, **kwargs: Any) -> Any:
        out = encode(*args, **kwargs)
        dist = out.latent_dist
        dist.sample = lambda generator=None: dist.mode()
        return out

    pipe.vae.encode = at_the_mean
    return pipe


class SD3ControlNets(ControlNetConformance):
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x", "ras-sd3")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def plain_pipeline(self, pipe: Any) -> Any:
        plain = diffusers.StableDiffusion3Pipeline.from_pipe(pipe)
        plain.set_progress_bar_config(disable=True)
        return plain

    def initial_latents(self, pipe: Any, count: int) -> torch.Tensor:
        shape = (count, 16, self.height // 8, self.width // 8)
        return torch.randn(shape, generator=torch.Generator().manual_seed(11))


class TestSD3ControlNet(SD3ControlNets):
    def make_pipeline(self) -> Any:
        tiny = make_sd3_pipeline("sd3-tiny", seed=0)
        return mean_encoding(
            diffusers.StableDiffusion3ControlNetPipeline.from_pipe(tiny, controlnet=make_sd3_controlnet(tiny))
        )


class TestSD3MultiControlNet(SD3ControlNets):
    """Two ControlNets with the VAE's shift and the pooled projections (not InstantX's zeros), one of them without a
    patch embedding of its own (SD3.5-Large's: the pipeline gives it a copy of the transformer's)."""

    recipes = ("ralu-sd3-3x",)
    windows = ({"controlnet_conditioning_scale": [0.4, 1.0], "control_guidance_end": [0.5, 1.0]},)
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8, "controlnet_conditioning_scale": [1.0, 1.0]}

    def make_pipeline(self) -> Any:
        tiny = make_sd3_pipeline("sd3-tiny", seed=0)
        nets = [
            make_sd3_controlnet(tiny, seed=1, force_zeros_for_pooled_projection=False),
            make_sd3_controlnet(tiny, seed=2, force_zeros_for_pooled_projection=False, use_pos_embed=False),
        ]
        multi = diffusers.SD3MultiControlNetModel(nets)
        return mean_encoding(diffusers.StableDiffusion3ControlNetPipeline.from_pipe(tiny, controlnet=multi))

    def control(self, count: int, seed: int = 5) -> Any:
        return PerControlNet(super().control(count, seed), super().control(count, seed + 1))


def test_ras_keeps_the_controlnets_keys_and_values_too_and_agrees_with_the_dense_step() -> None:
    pipe = TestSD3ControlNet().make_pipeline()
    kwargs = {
        "prompt": ["a red circle", "a blue square"],
        "generator": [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
        "control_image": input_images(2, 64, 96),
        "height": 64,
        "width": 96,
        "max_sequence_length": 8,
    }
    out = cached_attention_outputs(SD3Adapter(), pipe, kwargs)
    torch.testing.assert_close(out.recorded, out.plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.subset, dense_at(out), rtol=1e-5, atol=1e-5)


def test_the_baseline_gives_each_cfg_branch_its_own_control_latents() -> None:
    """The pipeline samples the control latents of its [uncond; cond] batch from torch's global generator, each copy
    apart: seeded alike, the baseline equals it (with the branches swapped it would not), and another seed differs."""
    tiny = make_sd3_pipeline("sd3-tiny", seed=0)
    pipe = diffusers.StableDiffusion3ControlNetPipeline.from_pipe(tiny, controlnet=make_sd3_controlnet(tiny))
    pipe.set_progress_bar_config(disable=True)
    call = {"prompt": PROMPTS[0], "control_image": input_images(1, 64, 96), "height": 64, "width": 96}
    call |= {"num_inference_steps": 2, "max_sequence_length": 8, "output_type": "latent"}

    def run(target: Any, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return target(**call, generator=torch.Generator().manual_seed(0)).images  # type: ignore[no-any-return]

    plain = run(pipe, 3)
    assert torch.equal(run(accelerate(pipe, "sd3-baseline"), 3), plain)
    assert not torch.equal(run(pipe, 4), plain)
