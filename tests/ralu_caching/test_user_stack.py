"""The caches under what users load: LoRAs (unfused, scaled per call, fused, mixed, hot-swapped under
torch.compile), torchao's int8 and float8 weights and GGUF checkpoints, offloading (model CPU offload; group
offloading, whose diffusers hooks share the blocks with the block-level caches' hooks) and image-to-image. The
same mixins the adapters run (`ralu_core.testing.lora`, `.quantized`, `.offload`, `.img2img`), on the caching
recipes: all of them on FLUX, offloading on SD3 (DeepCache needs the deeper `sd3-mid`, which makes every run
slower)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import diffusers
import torch

from ralu_core.testing.controlnet import ControlNetConformance
from ralu_core.testing.img2img import Img2ImgConformance
from ralu_core.testing.inpaint import InpaintConformance, box_mask
from ralu_core.testing.lora import LoraConformance
from ralu_core.testing.offload import OffloadConformance
from ralu_core.testing.quantized import QuantizedConformance, needs_quantizers
from ralu_core.testing.reference import ReferenceImageConformance
from ralu_flux.testing import make_flux_controlnet, make_flux_fill_pipeline, make_flux_pipeline, packed_mask
from ralu_sd3.testing import make_sd3_pipeline


class FluxCaches:
    baseline = "flux-baseline"
    recipes = ("ralu-flux-5x-taylorseer", "ralu-flux-5x-toca")
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16}

    def make_pipeline(self) -> Any:
        return make_flux_pipeline("tiny", seed=0)


class SD3Caches:
    baseline = "sd3-baseline"
    recipes = ("ralu-sd3-3x-deepcache",)
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 8}

    def make_pipeline(self) -> Any:
        return make_sd3_pipeline("sd3-mid", seed=0)  # DeepCache keeps a head and a tail: more than 2 blocks


class TestFluxCachesWithLora(FluxCaches, LoraConformance):
    pass


class TestFluxCachesOffloaded(FluxCaches, OffloadConformance):
    pass


class TestSD3CachesOffloaded(SD3Caches, OffloadConformance):
    pass


@needs_quantizers
class TestFluxCachesQuantized(FluxCaches, QuantizedConformance):
    pass


class TestFluxCachesImg2Img(FluxCaches, Img2ImgConformance):
    def make_pipeline(self) -> Any:
        return diffusers.FluxImg2ImgPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))


class TestFluxCachesInpaint(FluxCaches, InpaintConformance):
    def make_pipeline(self) -> Any:
        return diffusers.FluxInpaintPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))

    def kept_in_output(self, pipe: Any, mask: torch.Tensor) -> torch.Tensor:
        return packed_mask(pipe, mask, self.height, self.width) == 0


class TestFluxCachesFill(FluxCaches, Img2ImgConformance):
    strength = 1.0

    def make_pipeline(self) -> Any:
        return make_flux_fill_pipeline(seed=0)

    def run_from_image(
        self, pipe: Any, recipe: str | None, prompts: list[str], seeds: list[int] | int, **extra: Any
    ) -> Any:
        extra.setdefault("mask_image", box_mask(1, self.height, self.width, 0.25, 0.1, 0.7, 0.65))
        return super().run_from_image(pipe, recipe, prompts, seeds, **extra)


class TestSD3CachesImg2Img(SD3Caches, Img2ImgConformance):
    def make_pipeline(self) -> Any:
        return diffusers.StableDiffusion3Img2ImgPipeline.from_pipe(make_sd3_pipeline("sd3-mid", seed=0))


class TestFluxCachesControlNet(FluxCaches, ControlNetConformance):
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16, "guidance_scale": 3.5}

    def make_pipeline(self) -> Any:
        tiny = make_flux_pipeline("tiny", seed=0)
        return diffusers.FluxControlNetPipeline.from_pipe(tiny, controlnet=make_flux_controlnet(tiny))

    def plain_pipeline(self, pipe: Any) -> Any:
        plain = diffusers.FluxPipeline.from_pipe(pipe)
        plain.set_progress_bar_config(disable=True)
        return plain

    def initial_latents(self, pipe: Any, count: int) -> torch.Tensor:
        tokens = (self.height // 16) * (self.width // 16)
        return torch.randn(count, tokens, 64, generator=torch.Generator().manual_seed(11))


class TestFluxCachesKontext(FluxCaches, ReferenceImageConformance):
    height, width = 64, 96
    call: ClassVar[Mapping[str, Any]] = {"max_sequence_length": 16, "max_area": 64 * 96, "_auto_resize": False}

    def make_pipeline(self) -> Any:
        return diffusers.FluxKontextPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))
