"""A StableDiffusion3Pipeline call, prepared (`SD3Call`), and its arguments bound like the pipeline binds them
(`SD3Arguments`); the variant pipelines (`ralu_sd3.variants`) extend both.

SD3 patchifies the latent with a p x p convolution and adds absolute sine-cosine position
embeddings cropped from a centred grid. A token here is one p x p latent patch, in ralu's
(channel, row, col) layout. Dense states (the baseline, RALU's half-resolution stage 0 and
full-resolution stage 2) go through the model's own forward unchanged; mixed states go through the
same forward as a strip of tokens with per-token position embeddings (see forward.py and positions.py).
Classifier-free guidance runs the pipeline's way: [uncond; cond] in one batch, both halves of an
image sharing its tokens, so selection and injected noise are per image and shared by its pair.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, ClassVar

import attrs
import torch

from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.dit import DiTCall
from ralu_core.sampling.tokens import (
    TokenGrid,
    TokenState,
    dense_level,
    gather_tokens,
    image_to_tokens,
    tokens_to_image,
)
from ralu_core.strategies.base import StepInfo
from ralu_sd3.attention import CachedKVJointProcessor, attention_modules
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

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        """The pipeline's own ``check_inputs`` (and what else its call would fail on)."""
        pipeline.check_inputs(
            self.prompt,
            self.prompt_2,
            self.prompt_3,
            height,
            width,
            *self.checked_after_size(),
            negative_prompt=self.negative_prompt,
            negative_prompt_2=self.negative_prompt_2,
            negative_prompt_3=self.negative_prompt_3,
            prompt_embeds=self.prompt_embeds,
            negative_prompt_embeds=self.negative_prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=self.negative_pooled_prompt_embeds,
            max_sequence_length=self.max_sequence_length,
        )

    def checked_after_size(self) -> tuple[Any, ...]:
        """The variant's positional ``check_inputs`` arguments after the size."""
        return ()

    def make_call(self, pipe: Any, height: int, width: int) -> SD3Call:
        return SD3Call(pipe, self, height, width)


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
