"""The FLUX adapter: drives diffusers' FluxPipeline (FLUX.1-dev and schnell style models).

FLUX packs 2 x 2 latent pixels into one token (channels x 2 x 2, the layout ralu-core uses) and
positions tokens with 3-axis RoPE ids (0, row, col). Mixed-resolution tokens simply get float
ids: the native low-res grid in stage 0, half offsets for upsampled children in stage 1, the
ordinary grid in stage 2. Everything else (prompt encoding, noise, the scheduler's sigmas, VAE
decode and post-processing) goes through the pipeline's own methods, so that the baseline recipe
reproduces `pipe(...)` exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import attrs
import numpy as np
import torch

from ralu_core.errors import CallError, UnsupportedPipelineError
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import check_image_size, image_side, is_diffusers_pipeline, iter_chunks
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.controlnet import check_control_images, controlnet_scales, controlnets
from ralu_core.pipelines.dit import DiTAdapter, DiTCall
from ralu_core.pipelines.kv_store import processor_problems
from ralu_core.sampling.known_region import TokenField
from ralu_core.sampling.tokens import FULL, HALF, TokenGrid, TokenState, gather_tokens
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, StepInfo, TokenwiseFeatures
from ralu_flux.attention import DEFAULT_PROCESSOR, FluxTokenProcessor, Rotary, attention_modules, attention_problems

PATCH = 2  # FLUX packs 2 x 2 latent pixels per token


@attrs.frozen(kw_only=True)
class FluxArguments(PipelineArguments):
    """FluxPipeline.__call__'s arguments, bound like the pipeline binds them."""

    pipeline_name: ClassVar[str] = "FluxPipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        "sigmas": "custom sigmas (recipes own the schedule)",
        "ip_adapter_image": "IP-Adapter",
        "ip_adapter_image_embeds": "IP-Adapter",
        "negative_ip_adapter_image": "IP-Adapter",
        "negative_ip_adapter_image_embeds": "IP-Adapter",
        "callback_on_step_end": "step-end callbacks (use the ralu_on_step_end hook)",
    }

    prompt: str | list[str] | None = None
    prompt_2: str | list[str] | None = None
    negative_prompt: str | list[str] | None = None
    negative_prompt_2: str | list[str] | None = None
    true_cfg_scale: float = 1.0
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    sigmas: list[float] | None = None
    guidance_scale: float = 3.5
    num_images_per_prompt: int = 1
    generator: Any = None
    latents: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    ip_adapter_image: Any = None
    ip_adapter_image_embeds: Any = None
    negative_ip_adapter_image: Any = None
    negative_ip_adapter_image_embeds: Any = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    output_type: str | None = "pil"
    return_dict: bool = True
    joint_attention_kwargs: dict[str, Any] | None = None
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Any = None
    max_sequence_length: int = 512


@attrs.frozen(kw_only=True)
class FluxImg2ImgArguments(FluxArguments):
    """FluxImg2ImgPipeline.__call__'s arguments: FluxPipeline's, an input `image` and its `strength`."""

    pipeline_name: ClassVar[str] = "FluxImg2ImgPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "image", "height"),
        *("width", "strength", "num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt"),
        *("generator", "latents", "prompt_embeds", "pooled_prompt_embeds", "ip_adapter_image"),
        *("ip_adapter_image_embeds", "negative_ip_adapter_image", "negative_ip_adapter_image_embeds"),
        *("negative_prompt_embeds", "negative_pooled_prompt_embeds", "output_type", "return_dict"),
        *("joint_attention_kwargs", "callback_on_step_end", "callback_on_step_end_tensor_inputs"),
        "max_sequence_length",
    )

    image: Any = None
    strength: float = 0.6
    guidance_scale: float = 7.0


@attrs.frozen(kw_only=True)
class FluxInpaintArguments(FluxImg2ImgArguments):
    """FluxInpaintPipeline.__call__'s arguments: image-to-image's and a `mask_image` (white: repaint, black: keep).
    `masked_image_latents` is accepted and, as in the pipeline with FLUX.1's 64-channel transformer, unused."""

    pipeline_name: ClassVar[str] = "FluxInpaintPipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        **FluxArguments.unsupported_features,
        "padding_mask_crop": "padding_mask_crop (inpainting a crop around the mask)",
    }
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "image", "mask_image"),
        *("masked_image_latents", "height", "width", "padding_mask_crop", "strength", "num_inference_steps"),
        *("sigmas", "guidance_scale", "num_images_per_prompt", "generator", "latents", "prompt_embeds"),
        *("pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds", "negative_ip_adapter_image"),
        *("negative_ip_adapter_image_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"),
        *("output_type", "return_dict", "joint_attention_kwargs", "callback_on_step_end"),
        *("callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    needs_mask: ClassVar[bool] = True
    mask_image: Any = None
    masked_image_latents: Any = None
    padding_mask_crop: int | None = None


@attrs.frozen(kw_only=True)
class FluxFillArguments(FluxImg2ImgArguments):
    """FluxFillPipeline.__call__'s arguments: an input `image`, a `mask_image` (white: repaint) or the conditioning
    itself as `masked_image_latents`, and `strength` (1.0: from noise). It has no negative prompts."""

    pipeline_name: ClassVar[str] = "FluxFillPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "image", "mask_image", "masked_image_latents", "height", "width", "strength"),
        *("num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt", "generator", "latents"),
        *("prompt_embeds", "pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    mask_image: Any = None
    masked_image_latents: Any = None
    strength: float = 1.0
    guidance_scale: float = 30.0


@attrs.frozen(kw_only=True)
class FluxControlNetArguments(FluxArguments):
    """FluxControlNetPipeline.__call__'s arguments: FluxPipeline's and the ControlNet's (its image, mode, scale, and
    the share of the steps it acts in)."""

    pipeline_name: ClassVar[str] = "FluxControlNetPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "height", "width"),
        *("num_inference_steps", "sigmas", "guidance_scale", "control_guidance_start", "control_guidance_end"),
        *("control_image", "control_mode", "controlnet_conditioning_scale", "num_images_per_prompt", "generator"),
        *("latents", "prompt_embeds", "pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds"),
        *("negative_ip_adapter_image", "negative_ip_adapter_image_embeds", "negative_prompt_embeds"),
        *("negative_pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    guidance_scale: float = 7.0
    control_guidance_start: float | list[float] = 0.0
    control_guidance_end: float | list[float] = 1.0
    control_image: Any = None
    control_mode: int | list[int] | None = None
    controlnet_conditioning_scale: float | list[float] = 1.0


@attrs.frozen(kw_only=True)
class FluxControlArguments(FluxArguments):
    """FluxControlPipeline.__call__'s arguments (FLUX.1 Canny and Depth): FluxPipeline's less the negative prompts,
    and a `control_image`."""

    pipeline_name: ClassVar[str] = "FluxControlPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("prompt", "prompt_2", "control_image", "height", "width", "num_inference_steps", "sigmas"),
        *("guidance_scale", "num_images_per_prompt", "generator", "latents", "prompt_embeds", "pooled_prompt_embeds"),
        *("output_type", "return_dict", "joint_attention_kwargs", "callback_on_step_end"),
        *("callback_on_step_end_tensor_inputs", "max_sequence_length"),
    )

    control_image: Any = None


@attrs.frozen(kw_only=True)
class FluxKontextArguments(FluxArguments):
    """FluxKontextPipeline.__call__'s arguments: FluxPipeline's, the reference `image` first, and the area the size
    is fitted to (`max_area`) and the reference image's resizing (`_auto_resize`)."""

    pipeline_name: ClassVar[str] = "FluxKontextPipeline"
    positional_order: ClassVar[tuple[str, ...] | None] = (
        *("image", "prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "height"),
        *("width", "num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt", "generator"),
        *("latents", "prompt_embeds", "pooled_prompt_embeds", "ip_adapter_image", "ip_adapter_image_embeds"),
        *("negative_ip_adapter_image", "negative_ip_adapter_image_embeds", "negative_prompt_embeds"),
        *("negative_pooled_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs"),
        *("callback_on_step_end", "callback_on_step_end_tensor_inputs", "max_sequence_length", "max_area"),
        "_auto_resize",
    )

    image: Any = None
    max_area: int = 1024**2
    auto_resize: bool = attrs.field(default=True, alias="_auto_resize")


class FluxCall(DiTCall):
    """One prepared FluxPipeline call."""

    def __init__(self, pipe: Any, args: FluxArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.grid = flux_grid(pipe, height, width)
        self.row_rotary: Rotary | None = None
        """During one transformer evaluation of images at different positions: each row's rotary embedding."""
        self._rows_ok: bool | None = None
        self._residuals: dict[str, Any] = {}
        lora_scale = self.joint_attention_kwargs.get("scale")

        def encode(prompt: Any, prompt_2: Any, embeds: Any, pooled: Any) -> tuple[torch.Tensor, ...]:
            return tuple(
                pipe.encode_prompt(
                    prompt=prompt,
                    prompt_2=prompt_2,
                    prompt_embeds=embeds,
                    pooled_prompt_embeds=pooled,
                    device=self.device,
                    num_images_per_prompt=args.num_images_per_prompt,
                    max_sequence_length=args.max_sequence_length,
                    lora_scale=lora_scale,
                )
            )

        self.prompt_embeds, self.pooled, self.text_ids = encode(
            args.prompt, args.prompt_2, args.prompt_embeds, args.pooled_prompt_embeds
        )
        has_negative = args.negative_prompt is not None or (
            args.negative_prompt_embeds is not None and args.negative_pooled_prompt_embeds is not None
        )
        self.true_cfg = args.true_cfg_scale > 1 and has_negative
        if self.true_cfg:
            self.neg_embeds, self.neg_pooled, self.neg_text_ids = encode(
                args.negative_prompt,
                args.negative_prompt_2,
                args.negative_prompt_embeds,
                args.negative_pooled_prompt_embeds,
            )
            self.neg_embeds, self.neg_pooled = (
                _one_negative_for_every_prompt(t, self.prompt_embeds.shape[0], args.num_images_per_prompt)
                for t in (self.neg_embeds, self.neg_pooled)
            )
        self.dtype = self.prompt_embeds.dtype
        config = pipe.transformer.config
        self.guidance = (
            torch.full([1], args.guidance_scale, device=self.device, dtype=torch.float32)
            if config.guidance_embeds
            else None
        )
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        # FluxPipeline always computes mu (the scheduler ignores it unless it shifts with resolution).
        self.mu = self.schedule.shift_mu(self.grid.num_tokens, max_shift=1.15)
        self.default_shift = self.schedule.shift(self.mu)
        self.keep_keys_values(
            self.attention_modules,
            lambda original, layer: FluxTokenProcessor(original, layer, lambda: self.kv_store, lambda: self.row_rotary),
            slots=self.batch_size * (2 if self.true_cfg else 1),
        )

    def custom_sigmas(self, steps: int) -> list[float] | None:
        if getattr(self.pipe.scheduler.config, "use_flow_sigmas", False):
            return None
        return list(np.linspace(1.0, 1 / steps, steps).tolist())

    # --- tokens in, velocity out ----------------------------------------------------------------

    def initial_noise(self) -> torch.Tensor:
        channels = latent_channels(self.pipe)
        if self.args.latents is not None:
            latents = self.args.latents.to(device=self.device, dtype=self.dtype)
            expected = (self.batch_size, self.grid.num_tokens, self.grid.token_dim)
            if tuple(latents.shape) != expected:
                raise CallError(
                    f"`latents` must be packed FLUX latents of shape {expected}, got {tuple(latents.shape)}"
                )
            return latents
        latents, _ = self.pipe.prepare_latents(
            self.batch_size, channels, self.height, self.width, self.dtype, self.device, self.generator, None
        )
        return latents

    def packed_noise(self) -> torch.Tensor:
        """Noise drawn and packed as the variants' ``prepare_latents`` draw it (one draw of the unpacked shape)."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = self.latent_shape()
        noise = randn_tensor(shape, generator=cast(Any, self.generator), device=self.device, dtype=self.dtype)
        return self.pipe._pack_latents(noise, *shape)  # type: ignore[no-any-return]

    def latent_shape(self) -> tuple[int, int, int, int]:
        """(B, C, h, w) of the unpacked latents, as FLUX's pipelines size them."""
        factor = int(self.pipe.vae_scale_factor) * PATCH
        channels = latent_channels(self.pipe)
        return self.batch_size, channels, PATCH * (self.height // factor), PATCH * (self.width // factor)

    def _ids(self, positions: torch.Tensor) -> torch.Tensor:
        ids = torch.zeros(positions.shape[0], 3, dtype=torch.float64, device=self.device)
        ids[:, 1:] = positions.to(self.device)
        # float32, not the model dtype: bf16 cannot hold half offsets beyond 128 exactly. FluxPosEmbed
        # converts ids to float anyway, so integer grids give exactly the pipeline's embedding.
        return ids.to(torch.float32)

    def _transformer(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        rows: list[int],
        ids: torch.Tensor,
        negative: bool,
        group: str,
        step: StepInfo | None,
        active: torch.Tensor | None,
    ) -> torch.Tensor:
        embeds, pooled, text_ids = (
            (self.neg_embeds, self.neg_pooled, self.neg_text_ids)
            if negative
            else (self.prompt_embeds, self.pooled, self.text_ids)
        )
        transformer = self.pipe.transformer
        # The pipeline's context names, one per CFG branch; images evaluated apart get their own.
        name = ("uncond" if negative else "cond") + group
        # Key/value store slots: the conditional branch's images first, then the unconditional branch's.
        slots = [r + (self.batch_size if negative else 0) for r in rows]
        index = rows_index(rows, pooled.device)
        with self.denoiser_context(name, step, timestep[0]), self.kv_routing(slots, active):
            if not negative:  # the unconditional branch reuses them, as the pipelines do
                self._residuals = self.block_residuals(x, timestep, rows, ids, step)
            return transformer(
                hidden_states=x,
                timestep=timestep / 1000,
                guidance=None if self.guidance is None else self.guidance.expand(x.shape[0]),
                pooled_projections=pooled[index],
                encoder_hidden_states=embeds[index],
                txt_ids=text_ids,
                img_ids=ids,
                joint_attention_kwargs=self.joint_attention_kwargs,
                return_dict=False,
                **self._residuals,
            )[0]

    def block_residuals(
        self, x: torch.Tensor, timestep: torch.Tensor, rows: list[int], ids: torch.Tensor, step: StepInfo | None
    ) -> dict[str, Any]:
        """Extra transformer arguments computed on the same tokens as `x` before the conditional branch (a
        ControlNet's residuals for each block); empty: none."""
        return {}

    def token_channels(self, state: TokenState) -> torch.Tensor | None:
        """(B, n, C) channels the transformer reads after each of `state`'s tokens (FLUX Fill's masked image and
        mask), at each token's level; None: none."""
        return None

    def riders(self, level: int) -> Riders | None:
        """Tokens that ride along with the generated ones at every evaluation (Kontext's reference image), at `level`
        (the coarsest level of the generated tokens, so that both share one position grid); None: none."""
        return None

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        values, positions = state.values, state.positions()
        if active is not None:
            values, positions = gather_tokens(values, active), gather_tokens(positions, active)
        out = torch.empty_like(values)
        t = sigma.to(self.device) * self.num_train_timesteps
        routed = None if active is None or self.kv_store is None else active
        channels = self.token_channels(state)
        if channels is not None and active is not None:
            channels = gather_tokens(channels, active)
        riders = self.riders(state.coarsest_level)
        # Riders go after the generated tokens, as the pipelines place them, except where the key/value store reads
        # the generated tokens as the sequence's last ones (then the riders are computed with the text, never cached).
        riders_first = riders is not None and self.kv_store is not None
        groups, rotary = self._row_groups(state, positions, active, riders, riders_first)
        for rows in groups:
            index = rows_index(rows, values.device)
            x = values[index]
            count = x.shape[1]
            if channels is not None:
                x = torch.cat([x, channels[index].to(x.dtype)], dim=2)
            ids = self._ids(positions[rows[0]])
            if riders is not None:
                x, ids = riders.around(x, ids, index, first=riders_first)
            timestep = t.expand(x.shape[0]).to(x.dtype)
            group = "" if len(groups) == 1 else f"/images {','.join(str(r) for r in rows)}"
            tokens = None if routed is None else routed[rows_index(rows, routed.device)]
            self.row_rotary = rotary
            try:
                noise_pred = self._transformer(x, timestep, rows, ids, False, group, step, tokens)
                if self.true_cfg:
                    negative = self._transformer(x, timestep, rows, ids, True, group, step, tokens)
                    noise_pred = negative + self.args.true_cfg_scale * (noise_pred - negative)
            finally:
                self.row_rotary = None
            noise_pred = noise_pred[:, -count:] if riders_first else noise_pred[:, :count]
            out[index] = noise_pred.to(out.dtype)
        return out

    def _row_groups(
        self,
        state: TokenState,
        positions: torch.Tensor,
        active: torch.Tensor | None,
        riders: Riders | None,
        riders_first: bool,
    ) -> tuple[list[list[int]], Rotary | None]:
        """The batch rows that share one transformer call, and each row's rotary embedding where rows at different
        positions share it (None: RoPE ids are per call)."""
        everyone = [list(range(positions.shape[0]))]
        layout = state.known_layout()
        if positions.shape[0] == 1 or (active is None and layout is not None and layout.raster):
            return everyone, None  # one image, or every image on the same complete grid: nothing to compare
        if self.positions_per_row():
            # Images that may sit at different positions (each picked its own tokens) share one call: RoPE per row,
            # which is what shared RoPE ids compute where they do sit at the same positions. Nothing is compared, so
            # nothing is read from the device.
            return everyone, self._rotary_per_row(positions, riders, riders_first)
        # Processors that take one RoPE per call: images at different positions are evaluated apart. Grouping them
        # compares their positions, which reads the device (a host-device synchronisation this case needs).
        return [chunk.tolist() for chunk in iter_chunks(positions)], None

    def _rotary_per_row(self, positions: torch.Tensor, riders: Riders | None, riders_first: bool) -> Rotary:
        """Each image's rotary embedding for the text, its own image ids and the riders', as the transformer
        computes it."""
        embed = self.pipe.transformer.pos_embed
        text = self.text_ids.to(torch.float32)
        rows = []
        for p in positions:
            ids = self._ids(p)
            if riders is not None:
                ids = torch.cat([riders.ids, ids] if riders_first else [ids, riders.ids])
            rows.append(embed(torch.cat([text, ids], dim=0)))
        cos, sin = zip(*rows, strict=True)
        return torch.stack(cos), torch.stack(sin)

    def attention_modules(self) -> dict[str, Any]:
        """The attention modules RAS's stand-in processors go on, by name: the transformer's."""
        return attention_modules(self.pipe.transformer)

    def positions_per_row(self) -> bool:
        """Whether this call can give each batch row its own positions (the transformer's attention
        processors are diffusers' defaults, which the stand-in replaces); if not, images at different
        positions are evaluated apart."""
        if self._rows_ok is None:
            self._rows_ok = not processor_problems(self.attention_modules(), DEFAULT_PROCESSOR)
        if self._rows_ok and self.keys_values is not None:
            self.keys_values.ensure_processors()
        return self._rows_ok

    # --- pixels ---------------------------------------------------------------------------------

    def finish(self, state: TokenState) -> Any:
        from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

        latents = state.values  # packed, what FluxPipeline returns for output_type="latent"
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        return self.images.output(unpacked, latents, FluxPipelineOutput)


@attrs.frozen
class Riders:
    """Tokens evaluated with the generated ones at every step, at one level: (B, R, D) values, (R, 3) RoPE ids."""

    values: torch.Tensor
    ids: torch.Tensor

    def around(
        self, x: torch.Tensor, ids: torch.Tensor, rows: slice | torch.Tensor, *, first: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated tokens `x` of batch `rows` (and their `ids`) with the riders before or after them."""
        riders = self.values[rows].to(x.dtype)
        if first:
            return torch.cat([riders, x], dim=1), torch.cat([self.ids, ids])
        return torch.cat([x, riders], dim=1), torch.cat([ids, self.ids])


def rows_index(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    """Batch rows as an index: a slice where they are consecutive (always, but for images at different positions
    evaluated apart), so that selecting them copies nothing from the host to the device."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, device=device)


def flux_grid(pipe: Any, height: int, width: int) -> TokenGrid:
    """The packed-latent token grid FluxPipeline uses for an image size."""
    latent_h = 2 * (height // (pipe.vae_scale_factor * 2))
    latent_w = 2 * (width // (pipe.vae_scale_factor * 2))
    return TokenGrid(
        rows=latent_h // PATCH,
        cols=latent_w // PATCH,
        channels=latent_channels(pipe),
        patch=PATCH,
    )


def check_controlnet(pipe: Any, bound: FluxControlNetArguments) -> None:
    """What FluxControlNetPipeline would fail on, and the ControlNets ralu cannot make follow its tokens."""
    if any(net.input_hint_block is not None for net in check_control_images(pipe, bound.control_image)):
        raise UnsupportedPipelineError(
            "this ControlNet reads its control image in pixels through an input hint block (XLabs' FLUX ControlNets), "
            "which cannot follow ralu's token sets yet; ralu drives ControlNets that read VAE latents (InstantX, "
            "Union, Shakker-Labs)"
        )


def latent_channels(pipe: Any) -> int:
    """Latent channels per pixel: what the transformer puts out (its input may add conditioning, as FLUX Fill's)."""
    config = pipe.transformer.config
    return int(config.out_channels or config.in_channels) // (PATCH * PATCH)


def _one_negative_for_every_prompt(negative: torch.Tensor, batch: int, per_prompt: int) -> torch.Tensor:
    """A single negative prompt (a string for a list of prompts, as the pipeline accepts) serves every
    prompt; any other count must match the prompts."""
    if negative.shape[0] == batch:
        return negative
    if negative.shape[0] == per_prompt:
        return negative.repeat(batch // per_prompt, *([1] * (negative.dim() - 1)))
    raise CallError(
        f"got {negative.shape[0] // per_prompt} negative prompts for {batch // per_prompt} prompts; "
        "give one negative prompt, or one per prompt"
    )


class FluxImg2ImgCall(FluxCall):
    """One prepared FluxImg2ImgPipeline call: FluxPipeline's, starting from the input image's latents."""

    def __init__(self, pipe: Any, args: FluxImg2ImgArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.strength = args.strength

    def start_image(self) -> torch.Tensor:
        latents = self.encoded_image(lambda image: self.pipe._encode_vae_image(image=image, generator=self.generator))
        return self.pipe._pack_latents(latents, *latents.shape)  # type: ignore[no-any-return]

    def initial_noise(self) -> torch.Tensor:
        return self.packed_noise()


class FluxInpaintCall(FluxImg2ImgCall):
    """One prepared FluxInpaintPipeline call: image-to-image's, keeping the unmasked region at every step."""

    def inpaint_mask(self) -> torch.Tensor:
        batch, channels, height, width = self.latent_shape()
        mask = self.mask_latents((height, width)).repeat(1, channels, 1, 1)
        return self.pipe._pack_latents(mask, batch, channels, height, width)  # type: ignore[no-any-return]


class FluxFillCall(FluxImg2ImgCall):
    """One prepared FluxFillPipeline call: image-to-image's, every generated token reading the masked image's
    latents and the mask as extra channels. At half resolution (RALU's first stages) they are what the pipeline
    would make of the image at half size: the masked image's latents averaged over 2 x 2 latent pixels, the mask
    averaged over 2 x 2 pixels before its 8 x 8-pixel packing."""

    def __init__(self, pipe: Any, args: FluxFillArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.fill_args = args
        self._conditioning: TokenField | None = None

    def token_channels(self, state: TokenState) -> torch.Tensor:
        if self._conditioning is None:  # made after the noise, in the pipeline's order of random draws
            self._conditioning = self._fill_conditioning()
        return self._conditioning.at(state)

    def _fill_conditioning(self) -> TokenField:
        pipe, args = self.pipe, self.fill_args
        if args.masked_image_latents is not None:
            # Given packed: the half-resolution level can only average every channel, the mask's 8 x 8 packing too.
            given = args.masked_image_latents.to(device=self.device, dtype=self.dtype)
            return TokenField.of(given, self.grid)
        image = pipe.image_processor.preprocess(args.image, height=self.height, width=self.width).to(torch.float32)
        mask = pipe.mask_processor.preprocess(args.mask_image, height=self.height, width=self.width)
        masked = (image * (1 - mask)).to(device=self.device, dtype=self.dtype)
        batch, channels, _, _ = self.latent_shape()
        packed_mask, masked_latents = pipe.prepare_mask_latents(
            mask, masked, batch, channels, 1, *image.shape[-2:], self.dtype, self.device, self.generator
        )
        full = torch.cat((masked_latents, packed_mask), dim=-1)
        if not self.grid.supports_half_resolution():
            return TokenField(full=full, half=None)
        half_latents = TokenField.of(masked_latents, self.grid).half
        assert half_latents is not None
        half_mask = torch.nn.functional.avg_pool2d(mask.repeat(batch // mask.shape[0], 1, 1, 1), 2)
        half = torch.cat((half_latents, self._pack_mask(half_mask).to(device=self.device, dtype=self.dtype)), dim=-1)
        return TokenField(full=full, half=half)

    def _pack_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) pixel mask -> FLUX Fill's packing: each latent pixel's 8 x 8 pixels as channels, 2 x 2 latent
        pixels per token (FluxFillPipeline.prepare_mask_latents)."""
        factor = self.pipe.vae_scale_factor
        batch, _, height, width = mask.shape
        rows, cols = height // factor, width // factor
        grouped = mask[:, 0].reshape(batch, rows, factor, cols, factor).permute(0, 2, 4, 1, 3)
        return self.pipe._pack_latents(
            grouped.reshape(batch, factor * factor, rows, cols), batch, factor**2, rows, cols
        )  # type: ignore[no-any-return]


class FluxControlNetCall(FluxCall):
    """One prepared FluxControlNetPipeline call (one ControlNet or several): before each conditional evaluation the
    ControlNet runs on the same tokens, each reading its control image's latents at the token's level (averaged
    over 2 x 2 latent pixels at half resolution), and its residuals go to the transformer's blocks. Under RAS the
    ControlNet's attention keeps the skipped tokens' keys and values as the transformer's does."""

    def __init__(self, pipe: Any, args: FluxControlNetArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.control_args = args
        self.multi = hasattr(pipe.controlnet, "nets")
        self.nets = controlnets(pipe)
        self.controls: list[TokenField] = []
        self.modes: Any = None
        self._at: tuple[list[torch.Tensor], torch.Tensor | None] | None = None

    def attention_modules(self) -> dict[str, Any]:
        nets = {f"controlnet.{name}": module for name, module in attention_modules(self.pipe.controlnet).items()}
        return {**attention_modules(self.pipe.transformer), **nets}

    def positions_per_row(self) -> bool:
        # A Union ControlNet puts a mode token before the text, so the rotary embedding per row (made for the
        # transformer's sequence) does not fit its sequence: images at different positions are evaluated apart.
        return not any(net.union for net in self.nets) and super().positions_per_row()

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the control images (drawing from the generators) before it draws the noise.
        images = self.control_args.control_image
        images = list(images) if self.multi else [images]
        self.controls = [TokenField.of(control_latents(self, image), self.grid) for image in images]
        self.modes = self._modes(self.control_args.control_mode)
        return super().initial_noise()

    def _modes(self, mode: Any) -> Any:
        """ControlNet-Union's mode per image (one per ControlNet where several), as the pipeline makes them."""
        if mode is None:
            return [None] * len(self.nets) if self.multi else None
        if not self.multi:
            return torch.tensor(mode).to(self.device, dtype=torch.long).view(-1, 1).expand(self.batch_size, 1)
        modes = mode if isinstance(mode, list) else [mode] * len(self.nets)
        return [
            None if m is None else torch.tensor(m).expand(self.batch_size).to(self.device, dtype=torch.long)
            for m in modes
        ]

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        controls = [field.at(state) for field in self.controls]
        self._at = ([c if active is None else gather_tokens(c, active) for c in controls], active)
        try:
            return super().predict(state, sigma, active, step=step)
        finally:
            self._at = None

    def block_residuals(
        self, x: torch.Tensor, timestep: torch.Tensor, rows: list[int], ids: torch.Tensor, step: StepInfo | None
    ) -> dict[str, Any]:
        assert self._at is not None, "block residuals are computed inside predict"
        index = rows_index(rows, x.device)
        controls = [c[index] for c in self._at[0]]
        args = self.control_args
        scales = controlnet_scales(
            args.controlnet_conditioning_scale,
            args.control_guidance_start,
            args.control_guidance_end,
            len(self.nets),
            step,
        )
        guided = self.nets[0].config.guidance_embeds
        guidance = torch.tensor([self.args.guidance_scale], device=self.device).expand(x.shape[0]) if guided else None
        cond: Any
        mode: Any
        scale: Any
        if self.multi:
            modes = [None if m is None else m[index] for m in self.modes]
            cond, mode, scale = controls, modes, scales
        else:
            cond, mode, scale = controls[0], None if self.modes is None else self.modes[index], scales[0]
        blocks, singles = self.pipe.controlnet(
            hidden_states=x,
            controlnet_cond=cond,
            controlnet_mode=mode,
            conditioning_scale=scale,
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=self.pooled[index],
            encoder_hidden_states=self.prompt_embeds[index],
            txt_ids=self.text_ids,
            img_ids=ids,
            joint_attention_kwargs=self.joint_attention_kwargs,
            return_dict=False,
        )
        return {
            "controlnet_block_samples": blocks,
            "controlnet_single_block_samples": singles,
            "controlnet_blocks_repeat": False,
        }


class FluxControlCall(FluxCall):
    """One prepared FluxControlPipeline call (FLUX.1 Canny and Depth): every generated token reads the control
    image's latents as extra channels, at the token's level (averaged over 2 x 2 latent pixels at half resolution)."""

    def __init__(self, pipe: Any, args: FluxControlArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.control: TokenField | None = None

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the control image (drawing from the generators) before it draws the noise.
        self.control = TokenField.of(control_latents(self, self.args.control_image), self.grid)
        return super().initial_noise()

    def token_channels(self, state: TokenState) -> torch.Tensor:
        assert self.control is not None, "the control image is encoded with the initial noise"
        return self.control.at(state)


def control_latents(call: FluxCall, image: Any) -> torch.Tensor:
    """A control image prepared, encoded and packed as FLUX's control pipelines do (packed latents pass as given)."""
    pipe, vae = call.pipe, call.pipe.vae
    prepared = pipe.prepare_image(
        image=image,
        width=call.width,
        height=call.height,
        batch_size=call.batch_size,
        num_images_per_prompt=call.args.num_images_per_prompt,
        device=call.device,
        dtype=vae.dtype,
    )
    if prepared.ndim != 4:
        return prepared  # type: ignore[no-any-return]
    latents = vae.encode(prepared).latent_dist.sample(generator=call.generator)
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    rows, cols = latents.shape[2:]
    return pipe._pack_latents(latents, call.batch_size, latents.shape[1], rows, cols)  # type: ignore[no-any-return]


class FluxKontextCall(FluxCall):
    """One prepared FluxKontextPipeline call: FluxPipeline's, with the reference image's tokens riding along at every
    evaluation (RoPE ids (1, row, col)). Where the generated tokens' coarsest level is half resolution (RALU's first
    stages), the reference rides at half resolution too, averaged over 2 x 2 latent pixels, so that both images
    share one position grid."""

    def __init__(self, pipe: Any, args: FluxKontextArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.kontext_args = args
        self._riders: dict[int, Riders] = {}

    def riders(self, level: int) -> Riders | None:
        return self._riders.get(level)

    def initial_noise(self) -> torch.Tensor:
        # The pipeline encodes the reference image (drawing from the generators) before it draws the noise.
        reference = self._reference_latents()
        if reference is not None:
            self._riders = {FULL: self._pack_reference(reference), HALF: self._pack_reference(_halved(reference))}
        return super().initial_noise() if self.args.latents is not None else self.packed_noise()

    def _reference_latents(self) -> torch.Tensor | None:
        """(B, C, h, w) the reference image's latents, resized, encoded and repeated as FluxKontextPipeline does."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        pipe, image = self.pipe, self.kontext_args.image
        if image is None:
            return None
        if not (isinstance(image, torch.Tensor) and image.size(1) == pipe.latent_channels):
            first = image[0] if isinstance(image, list) else image
            image_height, image_width = pipe.image_processor.get_default_height_width(first)
            if self.kontext_args.auto_resize:
                aspect = image_width / image_height
                _, image_width, image_height = min(
                    (abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS
                )
            multiple = pipe.vae_scale_factor * 2
            image_width, image_height = image_width // multiple * multiple, image_height // multiple * multiple
            image = pipe.image_processor.resize(image, image_height, image_width)
            image = pipe.image_processor.preprocess(image, image_height, image_width)
        image = image.to(device=self.device, dtype=self.dtype)
        latents = image if image.shape[1] == pipe.latent_channels else pipe._encode_vae_image(image, self.generator)
        if self.batch_size % latents.shape[0] != 0:
            raise CallError(
                f"cannot repeat {latents.shape[0]} reference images for {self.batch_size} images; "
                "give 1 or one per image"
            )
        return torch.cat([latents] * (self.batch_size // latents.shape[0]), dim=0)  # type: ignore[no-any-return]

    def _pack_reference(self, latents: torch.Tensor) -> Riders:
        batch, channels, height, width = latents.shape
        ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, self.device, torch.float32)
        ids[..., 0] = 1
        return Riders(values=self.pipe._pack_latents(latents, batch, channels, height, width), ids=ids)


def _halved(latents: torch.Tensor) -> torch.Tensor:
    """Latents at half resolution, averaged over 2 x 2 pixels (area-resized where a side's tokens are odd), with an
    even side so that they pack into 2 x 2 tokens."""
    height, width = latents.shape[-2:]
    size = (2 * -(-height // 4), 2 * -(-width // 4))
    return torch.nn.functional.interpolate(latents.float(), size=size, mode="area").to(latents.dtype)


class FluxAdapter(DiTAdapter):
    """diffusers FluxPipeline (FLUX.1-dev, FLUX.1-schnell and models of the same architecture)."""

    name: ClassVar[str] = "flux"
    pipeline_classes: ClassVar[tuple[str, ...]] = (
        *("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxKontextPipeline", "FluxFillPipeline"),
        *("FluxControlNetPipeline", "FluxControlPipeline"),
    )
    variants_not_driven: ClassVar[Mapping[str, str]] = {
        "FluxControlImg2ImgPipeline": "its transformer reads the control image's latents as extra channels of every "
        "token, from an input image",
        "FluxControlInpaintPipeline": "its transformer reads the control image's latents as extra channels of every "
        "token, and the unmasked region is kept at every step",
        "FluxControlNetImg2ImgPipeline": "a ControlNet adds its residuals to the blocks, from an input image",
        "FluxControlNetInpaintPipeline": "a ControlNet adds its residuals to the blocks, and the unmasked region is "
        "kept at every step",
        "FluxKontextInpaintPipeline": "the reference image's tokens ride along, and the unmasked region is kept at "
        "every step",
    }
    architectures: ClassVar[tuple[str, ...]] = ("flux-dev", "flux-schnell")
    baseline_recipe: ClassVar[str] = "flux-baseline"
    default_recipe: ClassVar[str] = "ralu-flux-7x"
    Arguments = FluxArguments
    architecture: ClassVar[str] = "FLUX"
    size_rule_reads_transformer: ClassVar[bool] = False  # FLUX packs 2 x 2 latent pixels whatever its config
    long_text_tokenizer: ClassVar[str | None] = "tokenizer_2"  # T5
    blocks: ClassVar[ModelBlocks] = ModelBlocks(
        block_features={
            # Double-stream: the image and text attention outputs (one module, two outputs) and feed-forwards.
            "FluxTransformerBlock": BlockFeatures(forecast=("attn", "ff", "ff_context")),
            # Single-stream: the fused attention + MLP output (proj_out); its two inputs feed nothing else.
            "FluxSingleTransformerBlock": BlockFeatures(forecast=("proj_out",), feeds_forecast=("attn", "proj_mlp")),
        },
        token_features={
            # Text tokens come first in FLUX's joint attention. Double-stream: the feed-forwards per token (the
            # attention output, projections included, reused whole). Single-stream: the MLP input projection and
            # the fused output projection per token (the attention reused whole).
            "FluxTransformerBlock": TokenwiseFeatures(
                attention="attn", text_first=True, image=("ff",), text=("ff_context",), ratio_weight=0.4
            ),
            "FluxSingleTransformerBlock": TokenwiseFeatures(
                attention="attn", text_first=True, joint=("proj_mlp", "proj_out"), ratio_weight=1.6
            ),
        },
    )

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        return attention_problems(pipeline.transformer)

    def size_rule(self, vae_factor: int, transformer: Mapping[str, Any], coarsest_level: int) -> tuple[int, str]:
        why = f"for this recipe (VAE factor {vae_factor} x 2 x 2 packing" + (
            " x 2 for its half-resolution stage)" if coarsest_level else ")"
        )
        return vae_factor * PATCH * 2**coarsest_level, why

    def grid(self, pipeline: Any, height: int, width: int) -> TokenGrid:
        return flux_grid(pipeline, height, width)

    def size(self, pipeline: Any, coarsest_level: int, bound: Any) -> tuple[int, int]:
        if not isinstance(bound, FluxKontextArguments):
            return super().size(pipeline, coarsest_level, bound)
        # FluxKontextPipeline fits the size to `max_area` at the same aspect ratio, in multiples of 16 pixels.
        default = pipeline.default_sample_size * pipeline.vae_scale_factor
        height, width = image_side("height", bound.height or default), image_side("width", bound.width or default)
        if not isinstance(bound.max_area, int | float) or bound.max_area <= 0:
            raise CallError(f"max_area must be a positive number of pixels, got {bound.max_area!r}")
        aspect, multiple = width / height, pipeline.vae_scale_factor * 2
        width = round((bound.max_area * aspect) ** 0.5) // multiple * multiple
        height = round((bound.max_area / aspect) ** 0.5) // multiple * multiple
        rule, why = self.size_rule(int(pipeline.vae_scale_factor), pipeline.transformer.config, coarsest_level)
        fitted = f"{why}, after Kontext fits the size to max_area={bound.max_area}"
        return check_image_size(height, width, rule, fitted)

    def arguments_for(self, pipeline: Any) -> Any:
        if is_diffusers_pipeline(pipeline, ("FluxKontextPipeline",)):
            return FluxKontextArguments
        if is_diffusers_pipeline(pipeline, ("FluxFillPipeline",)):
            return FluxFillArguments
        if is_diffusers_pipeline(pipeline, ("FluxControlNetPipeline",)):
            return FluxControlNetArguments
        if is_diffusers_pipeline(pipeline, ("FluxControlPipeline",)):
            return FluxControlArguments
        if is_diffusers_pipeline(pipeline, ("FluxInpaintPipeline",)):
            return FluxInpaintArguments
        return FluxImg2ImgArguments if is_diffusers_pipeline(pipeline, ("FluxImg2ImgPipeline",)) else FluxArguments

    def check_call(self, pipeline: Any, bound: FluxArguments, height: int, width: int) -> None:
        if isinstance(bound, FluxFillArguments):
            if bound.mask_image is None and bound.masked_image_latents is None:
                raise CallError("FluxFillPipeline needs a `mask_image` (white: repaint) or `masked_image_latents`")
            pipeline.check_inputs(
                bound.prompt,
                bound.prompt_2,
                bound.strength,
                height,
                width,
                prompt_embeds=bound.prompt_embeds,
                pooled_prompt_embeds=bound.pooled_prompt_embeds,
                max_sequence_length=bound.max_sequence_length,
                image=bound.image,
                mask_image=bound.mask_image,
                masked_image_latents=bound.masked_image_latents,
            )
            return
        if isinstance(bound, FluxControlNetArguments):
            check_controlnet(pipeline, bound)
        if isinstance(bound, FluxControlArguments):  # no negative prompts
            if bound.control_image is None:
                raise CallError("FluxControlPipeline needs a `control_image` (a Canny edge map or a depth map)")
            pipeline.check_inputs(
                bound.prompt,
                bound.prompt_2,
                height,
                width,
                prompt_embeds=bound.prompt_embeds,
                pooled_prompt_embeds=bound.pooled_prompt_embeds,
                max_sequence_length=bound.max_sequence_length,
            )
            return
        if isinstance(bound, FluxInpaintArguments):
            inputs: tuple[Any, ...] = (bound.image, bound.mask_image, bound.strength, height, width, bound.output_type)
        elif isinstance(bound, FluxImg2ImgArguments):
            inputs = (bound.strength, height, width)
        else:
            inputs = (height, width)
        pipeline.check_inputs(
            bound.prompt,
            bound.prompt_2,
            *inputs,
            negative_prompt=bound.negative_prompt,
            negative_prompt_2=bound.negative_prompt_2,
            prompt_embeds=bound.prompt_embeds,
            negative_prompt_embeds=bound.negative_prompt_embeds,
            pooled_prompt_embeds=bound.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=bound.negative_pooled_prompt_embeds,
            max_sequence_length=bound.max_sequence_length,
        )

    def make_call(self, pipeline: Any, bound: FluxArguments, height: int, width: int) -> FluxCall:
        if isinstance(bound, FluxInpaintArguments):
            return FluxInpaintCall(pipeline, bound, height, width)
        if isinstance(bound, FluxFillArguments):
            return FluxFillCall(pipeline, bound, height, width)
        if isinstance(bound, FluxControlNetArguments):
            return FluxControlNetCall(pipeline, bound, height, width)
        if isinstance(bound, FluxControlArguments):
            return FluxControlCall(pipeline, bound, height, width)
        if isinstance(bound, FluxKontextArguments):
            return FluxKontextCall(pipeline, bound, height, width)
        if isinstance(bound, FluxImg2ImgArguments):
            return FluxImg2ImgCall(pipeline, bound, height, width)
        return FluxCall(pipeline, bound, height, width)

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        from ralu_flux.flops_profile import FluxFlopsProfile

        return FluxFlopsProfile.from_source(source)

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        from ralu_flux.flops_profile import FluxFlopsProfile

        return FluxFlopsProfile(
            type(pipeline).__name__,
            dict(pipeline.transformer.config),
            dict(pipeline.vae.config),
            baseline_steps=28,
            text_tokens=int(call_kwargs.get("max_sequence_length", 512)),  # T5 pads prompts to this length
        )

    embedded_models: ClassVar[tuple[str, ...]] = ("flux-tiny", "flux-mid")

    def build_embedded(self, name: str) -> Any:
        from ralu_flux.testing import make_flux_pipeline

        return make_flux_pipeline(name.removeprefix("flux-"), seed=0)  # type: ignore[arg-type]

    def embedded_component_config(self, name: str, component: str) -> dict[str, Any] | None:
        from ralu_flux.testing import size_config

        return size_config(name.removeprefix("flux-"), component)
