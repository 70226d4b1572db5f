"""The SD3 adapter: drives diffusers' StableDiffusion3Pipeline (SD3-medium, SD3.5 large and medium).

SD3 patchifies the latent with a p x p convolution and adds absolute sine-cosine position
embeddings cropped from a centred grid. A token here is one p x p latent patch, in ralu's
(channel, row, col) layout. Dense states (the baseline, RALU's half-resolution stage 0 and
full-resolution stage 2) go through the model's own forward unchanged; mixed states go through the
same forward as a strip of tokens with per-token position embeddings (see forward.py and positions.py).
Classifier-free guidance runs the pipeline's way: [uncond; cond] in one batch, both halves of an
image sharing its tokens, so selection and injected noise are per image and shared by its pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar, cast

import attrs
import torch

from ralu_core.errors import UnsupportedPipelineError
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import is_diffusers_pipeline
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.controlnet import check_control_images, controlnet_scales, controlnets
from ralu_core.pipelines.dit import DiTAdapter, DiTCall
from ralu_core.sampling.known_region import TokenField
from ralu_core.sampling.tokens import (
    TokenGrid,
    TokenState,
    dense_level,
    gather_tokens,
    image_to_tokens,
    tokens_to_image,
)
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, StepInfo, TokenwiseFeatures
from ralu_sd3.attention import CachedKVJointProcessor, attention_modules, attention_problems
from ralu_sd3.forward import strip_positions, tokens_to_strip
from ralu_sd3.positions import SinCosGrid


@attrs.frozen(kw_only=True)
class SD3Arguments(PipelineArguments):
    """StableDiffusion3Pipeline.__call__'s arguments, bound like the pipeline binds them."""

    pipeline_name: ClassVar[str] = "StableDiffusion3Pipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        "sigmas": "custom sigmas (recipes own the schedule)",
        "ip_adapter_image": "IP-Adapter",
        "ip_adapter_image_embeds": "IP-Adapter",
        "callback_on_step_end": "step-end callbacks (use the ralu_on_step_end hook)",
        "skip_guidance_layers": "skip-layer guidance",
    }

    prompt: str | list[str] | None = None
    prompt_2: str | list[str] | None = None
    prompt_3: str | list[str] | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    sigmas: list[float] | None = None
    guidance_scale: float = 7.0
    negative_prompt: str | list[str] | None = None
    negative_prompt_2: str | list[str] | None = None
    negative_prompt_3: str | list[str] | None = None
    num_images_per_prompt: int = 1
    generator: Any = None
    latents: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    ip_adapter_image: Any = None
    ip_adapter_image_embeds: Any = None
    output_type: str | None = "pil"
    return_dict: bool = True
    joint_attention_kwargs: dict[str, Any] | None = None
    clip_skip: int | None = None
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Any = None
    max_sequence_length: int = 256
    skip_guidance_layers: list[int] | None = None
    skip_layer_guidance_scale: float = 2.8
    skip_layer_guidance_stop: float = 0.2
    skip_layer_guidance_start: float = 0.01
    mu: float | None = None


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


def sd3_grid(pipe: Any, height: int, width: int) -> TokenGrid:
    """The patch token grid StableDiffusion3Pipeline's transformer uses for an image size."""
    config = pipe.transformer.config
    patch = int(config.patch_size)
    latent_h, latent_w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
    return TokenGrid(rows=latent_h // patch, cols=latent_w // patch, channels=int(config.in_channels), patch=patch)


class SD3Call(DiTCall):
    """One prepared StableDiffusion3Pipeline call."""

    def __init__(self, pipe: Any, args: SD3Arguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.patch = int(pipe.transformer.config.patch_size)
        self.grid = sd3_grid(pipe, height, width)
        self.sincos = SinCosGrid.of(pipe.transformer.pos_embed)
        self.cfg = args.guidance_scale > 1
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=args.prompt,
            prompt_2=args.prompt_2,
            prompt_3=args.prompt_3,
            negative_prompt=args.negative_prompt,
            negative_prompt_2=args.negative_prompt_2,
            negative_prompt_3=args.negative_prompt_3,
            do_classifier_free_guidance=self.cfg,
            prompt_embeds=args.prompt_embeds,
            negative_prompt_embeds=args.negative_prompt_embeds,
            pooled_prompt_embeds=args.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=args.negative_pooled_prompt_embeds,
            device=self.device,
            clip_skip=args.clip_skip,
            num_images_per_prompt=args.num_images_per_prompt,
            max_sequence_length=args.max_sequence_length,
            lora_scale=self.joint_attention_kwargs.get("scale"),
        )
        self.dtype = embeds.dtype
        # The pipeline's CFG layout: one batch of [uncond; cond].
        self.embeds = torch.cat([negative, embeds]) if self.cfg else embeds
        self.pooled = torch.cat([negative_pooled, pooled]) if self.cfg else pooled
        self.mu = args.mu if args.mu is not None else self.schedule.resolution_shift(self.grid.num_tokens, 1.16)
        self.default_shift = self.schedule.shift(self.mu)
        self.keep_keys_values(
            self.attention_modules,
            lambda original, layer: CachedKVJointProcessor(original, layer, lambda: self.kv_store),
            slots=self.batch_size * (2 if self.cfg else 1),
        )

    def attention_modules(self) -> dict[str, Any]:
        """The attention modules RAS's stand-in processors go on, by name: the transformer's."""
        return attention_modules(self.pipe.transformer)

    def initial_noise(self) -> torch.Tensor:
        return image_to_tokens(self.latent_image_noise(), self.patch)

    def block_residuals(self, batch: torch.Tensor, timestep: torch.Tensor, step: StepInfo | None) -> dict[str, Any]:
        """Extra transformer arguments computed on the same (CFG) batch before it (a ControlNet's residuals for
        each block); empty: none."""
        return {}

    def strip_embedding(self, embedding: torch.Tensor) -> AbstractContextManager[None]:
        """While inside, the models that embed the latent embed a token strip with `embedding`."""
        return strip_positions(self.pipe.transformer, embedding)

    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.batch_size, self.grid.channels, *self.grid.latent_size

    def _evaluate(
        self, latent: torch.Tensor, t: torch.Tensor, step: StepInfo | None, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The model on a (B, C, h, w) latent (a dense grid or a token strip of the `active` tokens), guided as
        the pipeline does: one batch of [uncond; cond], in one cache context ("cond_uncond", diffusers' name for
        it); key/value store slots follow the batch rows."""
        batch = torch.cat([latent, latent]) if self.cfg else latent
        if active is not None and self.cfg:
            active = torch.cat([active, active])
        with (
            self.denoiser_context("cond_uncond" if self.cfg else "cond", step, t),
            self.kv_routing(range(batch.shape[0]), active),
        ):
            timestep = t.expand(batch.shape[0])
            out = self.pipe.transformer(
                hidden_states=batch,
                timestep=timestep,
                encoder_hidden_states=self.embeds,
                pooled_projections=self.pooled,
                joint_attention_kwargs=self.joint_attention_kwargs,
                return_dict=False,
                **self.block_residuals(batch, timestep, step),
            )[0]
        if not self.cfg:
            return out  # type: ignore[no-any-return]
        uncond, text = out.chunk(2)
        return uncond + self.args.guidance_scale * (text - uncond)  # type: ignore[no-any-return]

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        t = sigma.to(self.device) * self.pipe.scheduler.config.num_train_timesteps
        level = dense_level(state) if active is None else None
        if level is not None:
            rows, cols = self.grid.rows >> level, self.grid.cols >> level
            latent = tokens_to_image(state.values, rows, cols, self.grid.channels, self.patch)
            return image_to_tokens(self._evaluate(latent, t, step), self.patch)
        values, positions = state.values, state.positions()
        if active is not None:
            values, positions = gather_tokens(values, active), gather_tokens(positions, active)
        coarsest = state.coarsest_level
        embedding = self.sincos.embed(positions, self.grid.rows >> coarsest, self.grid.cols >> coarsest)
        embedding = embedding.to(self.device)
        if self.cfg:
            embedding = torch.cat([embedding, embedding])
        with self.strip_embedding(embedding):
            strip = self._evaluate(tokens_to_strip(values, self.grid.channels, self.patch), t, step, active)
        return image_to_tokens(strip, self.patch)

    def finish(self, state: TokenState) -> Any:
        from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

        latents = tokens_to_image(state.values, self.grid.rows, self.grid.cols, self.grid.channels, self.patch)
        return self.images.output(latents, latents, StableDiffusion3PipelineOutput)


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

    def start_image(self) -> torch.Tensor:
        return image_to_tokens(self.encoded_image(self._encode), self.patch)

    def initial_noise(self) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        generator = cast(Any, self.generator)
        noise = randn_tensor(self.latent_shape(), generator=generator, device=self.device, dtype=self.dtype)
        return image_to_tokens(noise, self.patch)


class SD3InpaintCall(SD3Img2ImgCall):
    """One prepared StableDiffusion3InpaintPipeline call: image-to-image's, keeping the unmasked region at every
    step (the pipeline's 16-channel transformer path)."""

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
            dtype=self.dtype,
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


class SD3Adapter(DiTAdapter):
    """diffusers StableDiffusion3Pipeline (SD3-medium, SD3.5-large, SD3.5-medium)."""

    name: ClassVar[str] = "sd3"
    pipeline_classes: ClassVar[tuple[str, ...]] = (
        *("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
        "StableDiffusion3ControlNetPipeline",
    )
    variants_not_driven: ClassVar[Mapping[str, str]] = {
        "StableDiffusion3ControlNetInpaintingPipeline": "a ControlNet that reads the masked image and the mask adds "
        "its residuals to the blocks",
        "StableDiffusion3PAGPipeline": "perturbed-attention guidance evaluates a third branch with some layers' "
        "attention replaced",
        "StableDiffusion3PAGImg2ImgPipeline": "perturbed-attention guidance evaluates a third branch with some "
        "layers' attention replaced",
    }
    architectures: ClassVar[tuple[str, ...]] = ("sd3-medium", "sd35-large", "sd35-large-turbo")
    embedded_models: ClassVar[tuple[str, ...]] = ("sd3-tiny", "sd35-tiny", "sd3-mid")
    baseline_recipe: ClassVar[str] = "sd3-baseline"
    default_recipe: ClassVar[str] = "ralu-sd3-3x"
    Arguments = SD3Arguments
    architecture: ClassVar[str] = "SD3"
    blocks: ClassVar[ModelBlocks] = ModelBlocks(
        last_block_returns_text=False,  # the last joint block is `context_pre_only`
        block_features={
            # Joint blocks: attention (image and text outputs), SD3.5's second image attention, the feed-forwards
            # (the last block has no text feed-forward and SD3 no `attn2`: absent names are skipped).
            "JointTransformerBlock": BlockFeatures(forecast=("attn", "attn2", "ff", "ff_context")),
        },
        token_features={
            # Image tokens come first in SD3's joint attention; the feed-forwards per token, the attentions
            # (SD3.5's second, image-only one too) reused whole. ToCa has no official SD3 code: weight 1.
            "JointTransformerBlock": TokenwiseFeatures(
                attention="attn", text_first=False, image=("ff",), text=("ff_context",), also_reused=("attn2",)
            ),
        },
    )
    long_text_tokenizer: ClassVar[str | None] = "tokenizer_3"  # T5

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        return attention_problems(pipeline.transformer)

    def size_rule(self, vae_factor: int, transformer: Mapping[str, Any], coarsest_level: int) -> tuple[int, str]:
        patch = int(transformer.get("patch_size", 2))
        why = f"for this recipe (VAE factor {vae_factor} x patch {patch}" + (
            " x 2 for its half-resolution stage)" if coarsest_level else ")"
        )
        return vae_factor * patch * 2**coarsest_level, why

    def grid(self, pipeline: Any, height: int, width: int) -> TokenGrid:
        return sd3_grid(pipeline, height, width)

    def arguments_for(self, pipeline: Any) -> Any:
        if is_diffusers_pipeline(pipeline, ("StableDiffusion3InpaintPipeline",)):
            return SD3InpaintArguments
        if is_diffusers_pipeline(pipeline, ("StableDiffusion3ControlNetPipeline",)):
            return SD3ControlNetArguments
        img2img = is_diffusers_pipeline(pipeline, ("StableDiffusion3Img2ImgPipeline",))
        return SD3Img2ImgArguments if img2img else SD3Arguments

    def check_call(self, pipeline: Any, bound: SD3Arguments, height: int, width: int) -> None:
        unit = int(pipeline.vae_scale_factor) * int(pipeline.transformer.config.patch_size)
        SinCosGrid.of(pipeline.transformer.pos_embed).check_fits(height // unit, width // unit)
        if isinstance(bound, SD3InpaintArguments) and int(pipeline.transformer.config.in_channels) != 16:
            raise UnsupportedPipelineError(
                f"ralu drives SD3 inpainting with a 16-channel transformer (the base model's); this one reads "
                f"{pipeline.transformer.config.in_channels} channels (the mask and the masked image as extra channels "
                "of every token), which ralu does not feed yet"
            )
        if isinstance(bound, SD3ControlNetArguments):
            check_control_images(pipeline, bound.control_image)
        strength = (bound.strength,) if isinstance(bound, SD3Img2ImgArguments) else ()
        pipeline.check_inputs(
            bound.prompt,
            bound.prompt_2,
            bound.prompt_3,
            height,
            width,
            *strength,
            negative_prompt=bound.negative_prompt,
            negative_prompt_2=bound.negative_prompt_2,
            negative_prompt_3=bound.negative_prompt_3,
            prompt_embeds=bound.prompt_embeds,
            negative_prompt_embeds=bound.negative_prompt_embeds,
            pooled_prompt_embeds=bound.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=bound.negative_pooled_prompt_embeds,
            max_sequence_length=bound.max_sequence_length,
        )

    def make_call(self, pipeline: Any, bound: SD3Arguments, height: int, width: int) -> SD3Call:
        if isinstance(bound, SD3InpaintArguments):
            return SD3InpaintCall(pipeline, bound, height, width)
        if isinstance(bound, SD3ControlNetArguments):
            return SD3ControlNetCall(pipeline, bound, height, width)
        if isinstance(bound, SD3Img2ImgArguments):
            return SD3Img2ImgCall(pipeline, bound, height, width)
        return SD3Call(pipeline, bound, height, width)

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        from ralu_sd3.flops_profile import SD3FlopsProfile

        return SD3FlopsProfile.from_source(source)

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        from ralu_sd3.flops_profile import SD3FlopsProfile

        return SD3FlopsProfile.from_pipeline(pipeline, call_kwargs)

    def build_embedded(self, name: str) -> Any:
        from ralu_sd3.testing import make_sd3_pipeline

        return make_sd3_pipeline(name, seed=0)  # type: ignore[arg-type]

    def embedded_component_config(self, name: str, component: str) -> dict[str, Any] | None:
        from ralu_sd3.testing import variant_config

        return variant_config(name, component)
