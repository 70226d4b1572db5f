"""SD3's variant pipelines, each the text-to-image call plus what the variant feeds the transformer: an input
image to start from (img2img), a region kept at every step (inpaint), a ControlNet's residuals (ControlNet), as
model knowledge on the core's shared pieces (the engine's image start and kept region, `TokenField`,
`ralu_core.pipelines.controlnet`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar, cast

import attrs
import torch

from ralu_core.errors import UnsupportedPipelineError
from ralu_core.pipelines.controlnet import check_control_images, controlnet_scales, controlnets
from ralu_core.sampling.known_region import TokenField
from ralu_core.sampling.tokens import TokenState, gather_tokens, image_to_tokens, tokens_to_image
from ralu_core.strategies.base import StepInfo
from ralu_sd3.attention import attention_modules
from ralu_sd3.call import SD3Arguments, SD3Call
from ralu_sd3.forward import strip_positions


@attrs.frozen(kw_only=True)
class SD3Img2ImgArguments(SD3Arguments):
    """StableDiffusion3Img2ImgPipeline.__call__'s arguments: the text-to-image ones (less skip-layer guidance,
    which it lacks), an input `image` and its `strength`."""

    pipeline_name: ClassVar[str] = "StableDiffusion3Img2ImgPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "prompt_3", "height", "width", "image", "strength", "num_inference_steps"),
        *("sigmas", "guidance_scale", "negative_prompt", "negative_prompt_2", "negative_prompt_3"),
        *("num_images_per_prompt", "generator", "latents", "prompt_embeds", "negative_prompt_embeds"),
        *("pooled_prompt_embeds", "negative_pooled_prompt_embeds", "output_type", "ip_adapter_image"),
        *("ip_adapter_image_embeds", "return_dict", "joint_attention_kwargs", "clip_skip"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length", "mu"),
    )

    image: Any = None
    strength: float = 0.6

    def checked_after_size(self) -> tuple[Any, ...]:
        return (self.strength,)

    def make_call(self, pipe: Any, height: int, width: int) -> SD3Call:
        return SD3Img2ImgCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class SD3InpaintArguments(SD3Img2ImgArguments):
    """StableDiffusion3InpaintPipeline.__call__'s arguments: image-to-image's and a `mask_image` (white: repaint,
    black: keep). `masked_image_latents` is accepted and, as in the pipeline with a 16-channel transformer,
    unused."""

    pipeline_name: ClassVar[str] = "StableDiffusion3InpaintPipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        **SD3Arguments.unsupported_features,
        "padding_mask_crop": "padding_mask_crop (inpainting a crop around the mask)",
    }
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "prompt_3", "image", "mask_image", "masked_image_latents", "height", "width"),
        *("padding_mask_crop", "strength", "num_inference_steps", "sigmas", "guidance_scale", "negative_prompt"),
        *("negative_prompt_2", "negative_prompt_3", "num_images_per_prompt", "generator", "latents"),
        *("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
        *("ip_adapter_image", "ip_adapter_image_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("clip_skip", "callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length", "mu"),
    )

    needs_mask: ClassVar[bool] = True
    mask_image: Any = None
    masked_image_latents: Any = None
    padding_mask_crop: int | None = None

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        if int(pipeline.transformer.config.in_channels) != 16:
            raise UnsupportedPipelineError(
                f"ralu drives SD3 inpainting with a 16-channel transformer (the base model's); this one reads "
                f"{pipeline.transformer.config.in_channels} channels (the mask and the masked image as extra channels "
                "of every token), which ralu does not feed yet"
            )
        super().check_inputs(pipeline, height, width)

    def make_call(self, pipe: Any, height: int, width: int) -> SD3Call:
        return SD3InpaintCall(pipe, self, height, width)


@attrs.frozen(kw_only=True)
class SD3ControlNetArguments(SD3Arguments):
    """StableDiffusion3ControlNetPipeline.__call__'s arguments: the text-to-image ones (less skip-layer guidance,
    which it lacks) and the ControlNet's (its image, scale, and the share of the steps it acts in)."""

    pipeline_name: ClassVar[str] = "StableDiffusion3ControlNetPipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        **SD3Arguments.unsupported_features,
        "controlnet_pooled_projections": "controlnet_pooled_projections",
    }
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "prompt_3", "height", "width", "num_inference_steps", "sigmas", "guidance_scale"),
        *("control_guidance_start", "control_guidance_end", "control_image", "controlnet_conditioning_scale"),
        *("controlnet_pooled_projections", "negative_prompt", "negative_prompt_2", "negative_prompt_3"),
        *("num_images_per_prompt", "generator", "latents", "prompt_embeds", "negative_prompt_embeds"),
        *("pooled_prompt_embeds", "negative_pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds"),
        *("output_type", "return_dict", "joint_attention_kwargs", "clip_skip", "callback_on_step_end"),
        *("callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    control_guidance_start: float | list[float] = 0.0
    control_guidance_end: float | list[float] = 1.0
    control_image: Any = None
    controlnet_conditioning_scale: float | list[float] = 1.0
    controlnet_pooled_projections: torch.Tensor | None = None

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        check_control_images(pipeline, self.control_image, height, width)
        super().check_inputs(pipeline, height, width)

    def make_call(self, pipe: Any, height: int, width: int) -> SD3Call:
        return SD3ControlNetCall(pipe, self, height, width)


class SD3Img2ImgCall(SD3Call):
    """One prepared StableDiffusion3Img2ImgPipeline call: the text-to-image one, starting from the input image."""

    def __init__(self, pipe: Any, args: SD3Img2ImgArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.strength = args.strength

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        """The VAE encoding of SD3's img2img ``prepare_latents``: one generator per image where a list is given."""
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents

        vae, generator = self.pipe.vae, cast(Any, self.generator)
        if isinstance(generator, list):
            parts = [
                retrieve_latents(vae.encode(image[i : i + 1]), generator=generator[i]) for i in range(self.batch_size)
            ]
            latents = torch.cat(parts, dim=0)
        else:
            latents = retrieve_latents(vae.encode(image), generator=generator)
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor  # type: ignore[no-any-return]

    def start_image(self) -> torch.Tensor | None:
        return image_to_tokens(self.encoded_image(self._encode), self.patch)

    def initial_noise(self) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        generator = cast(Any, self.generator)
        noise = randn_tensor(self.latent_shape(), generator=generator, device=self.device, dtype=self.dtype)
        return image_to_tokens(noise, self.patch)


class SD3InpaintCall(SD3Img2ImgCall):
    """One prepared StableDiffusion3InpaintPipeline call: image-to-image's, keeping the unmasked region at every
    step (the pipeline's 16-channel transformer path)."""

    def __init__(self, pipe: Any, args: SD3InpaintArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        # StableDiffusion3InpaintPipeline decodes `latents / scaling_factor`, without the VAE's shift factor (its
        # img2img and text-to-image pipelines add it); the images follow it, so that the baseline is the pipeline.
        self.images.output_shift = False

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.pipe._encode_vae_image(image=image, generator=self.generator)  # type: ignore[no-any-return]

    def inpaint_mask(self) -> torch.Tensor:
        _, channels, height, width = self.latent_shape()
        mask = self.mask_latents((height, width))
        return image_to_tokens(mask.expand(-1, channels, -1, -1), self.patch)


class SD3ControlNetCall(SD3Call):
    """One prepared StableDiffusion3ControlNetPipeline call (one ControlNet or several): before each evaluation the
    ControlNet runs on the same (CFG) batch, laid out as the transformer's (a dense grid or a token strip, the
    ControlNet's patch embedding swapped like the transformer's), each token reading its control image's latents
    at its level (averaged over 2 x 2 latent pixels at half resolution); its residuals go to the transformer's
    blocks. Under RAS its attention keeps the skipped tokens' keys and values as the transformer's does."""

    def __init__(self, pipe: Any, args: SD3ControlNetArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.control_args = args
        self.nets = controlnets(pipe)
        self.multi = hasattr(pipe.controlnet, "nets")
        self.controls: list[list[TokenField]] = []
        """Per ControlNet, per CFG branch in the batch's order: the control latents (the pipeline encodes each
        branch's copy apart, drawing from the global generator, so they differ)."""
        self._now: list[list[torch.Tensor]] | None = None

    def attention_modules(self) -> dict[str, Any]:
        nets = {f"controlnet.{name}": module for name, module in attention_modules(self.pipe.controlnet).items()}
        return {**attention_modules(self.pipe.transformer), **nets}

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the control images before it draws the noise.
        images = self.control_args.control_image
        for image in images if self.multi else [images]:
            latents = image_to_tokens(self._control_latents(image), self.patch)
            branches = latents.chunk(2) if self.cfg else (latents,)
            self.controls.append([TokenField.of(branch, self.grid) for branch in branches])
        return super().initial_noise()

    def _control_latents(self, image: Any) -> torch.Tensor:
        """A control image prepared and encoded as StableDiffusion3ControlNetPipeline does (the CFG batch)."""
        pipe, vae = self.pipe, self.pipe.vae
        config = self.nets[0].config
        shift = 0 if config.force_zeros_for_pooled_projection else vae.config.shift_factor  # InstantX: no shift
        prepared = pipe.prepare_image(
            image=image,
            width=self.width,
            height=self.height,
            batch_size=self.batch_size,
            num_images_per_prompt=self.args.num_images_per_prompt,
            device=self.device,
            dtype=self.pipe.transformer.dtype,
            do_classifier_free_guidance=self.cfg,
            guess_mode=False,
        )
        return (vae.encode(prepared).latent_dist.sample() - shift) * vae.config.scaling_factor  # type: ignore[no-any-return]

    @contextmanager
    def strip_embedding(self, embedding: torch.Tensor) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(super().strip_embedding(embedding))
            for net in self.nets:
                stack.enter_context(strip_positions(net, embedding))
            yield

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        at = [[field.at(state) for field in branches] for branches in self.controls]
        self._now = [[c if active is None else gather_tokens(c, active) for c in branches] for branches in at]
        try:
            return super().predict(state, sigma, active, step=step)
        finally:
            self._now = None

    def block_residuals(self, batch: torch.Tensor, timestep: torch.Tensor, step: StepInfo | None) -> dict[str, Any]:
        assert self._now is not None, "block residuals are computed inside predict"
        rows, cols = batch.shape[-2] // self.patch, batch.shape[-1] // self.patch  # a grid, or a strip of one row
        conds = [
            tokens_to_image(torch.cat(branches), rows, cols, self.grid.channels, self.patch) for branches in self._now
        ]
        args, config = self.control_args, self.nets[0].config
        scales = controlnet_scales(
            args.controlnet_conditioning_scale,
            args.control_guidance_start,
            args.control_guidance_end,
            len(self.nets),
            step,
        )
        pooled = torch.zeros_like(self.pooled) if config.force_zeros_for_pooled_projection else self.pooled
        samples = self.pipe.controlnet(
            hidden_states=batch,
            timestep=timestep,
            encoder_hidden_states=self.embeds if config.joint_attention_dim is not None else None,
            pooled_projections=pooled,
            joint_attention_kwargs=self.joint_attention_kwargs,
            controlnet_cond=conds if self.multi else conds[0],
            conditioning_scale=scales if self.multi else scales[0],
            return_dict=False,
        )[0]
        return {"block_controlnet_hidden_states": samples}
