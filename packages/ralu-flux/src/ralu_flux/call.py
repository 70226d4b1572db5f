"""A FluxPipeline call, prepared: FLUX's tokens, positions and transformer evaluation (`FluxCall`), and its
arguments bound like the pipeline binds them (`FluxArguments`). The variant pipelines (`ralu_flux.variants`)
extend both.

FLUX packs 2 x 2 latent pixels into one token (channels x 2 x 2, the layout ralu-core uses) and
positions tokens with 3-axis RoPE ids (0, row, col). Mixed-resolution tokens simply get float
ids: the native low-res grid in stage 0, half offsets for upsampled children in stage 1, the
ordinary grid in stage 2. Everything else (prompt encoding, noise, the scheduler's sigmas, VAE
decode and post-processing) goes through the pipeline's own methods, so that the baseline recipe
reproduces `pipe(...)` exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import attrs
import numpy as np
import torch

from ralu_core.errors import CallError
from ralu_core.pipelines.adapter import iter_chunks
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.dit import DiTCall
from ralu_core.pipelines.kv_store import processor_problems
from ralu_core.pipelines.rotary import Rotary
from ralu_core.sampling.tokens import TokenGrid, TokenState, gather_tokens
from ralu_core.strategies.base import StepInfo
from ralu_flux.attention import DEFAULT_PROCESSOR, FluxTokenProcessor, attention_modules

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

    def check_inputs(self, pipeline: Any, height: int, width: int) -> None:
        """The pipeline's own ``check_inputs`` (and what else its call would fail on)."""
        pipeline.check_inputs(
            self.prompt,
            self.prompt_2,
            *self.checked_before_size(),
            height,
            width,
            *self.checked_after_size(),
            negative_prompt=self.negative_prompt,
            negative_prompt_2=self.negative_prompt_2,
            prompt_embeds=self.prompt_embeds,
            negative_prompt_embeds=self.negative_prompt_embeds,
            pooled_prompt_embeds=self.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=self.negative_pooled_prompt_embeds,
            max_sequence_length=self.max_sequence_length,
        )

    def checked_before_size(self) -> tuple[Any, ...]:
        """The variant's positional ``check_inputs`` arguments before the size."""
        return ()

    def checked_after_size(self) -> tuple[Any, ...]:
        """The variant's positional ``check_inputs`` arguments after the size."""
        return ()

    def make_call(self, pipe: Any, height: int, width: int) -> FluxCall:
        return FluxCall(pipe, self, height, width)


class FluxCall(DiTCall):
    """One prepared FluxPipeline call."""

    def __init__(self, pipe: Any, args: FluxArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.grid = flux_grid(pipe, height, width)
        self.row_rotary: Rotary | None = None
        """During one transformer evaluation of images at different positions: each row's rotary embedding."""
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

    def stand_in_problems(self) -> list[str]:
        return processor_problems(self.attention_modules(), DEFAULT_PROCESSOR)

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
