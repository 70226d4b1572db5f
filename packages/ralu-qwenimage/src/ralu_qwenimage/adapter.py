"""The Qwen-Image adapter: drives diffusers' QwenImagePipeline (Qwen-Image, QwenImageTransformer2DModel).

What Qwen-Image does differently, all handled here:

* Positions: the transformer builds its RoPE itself from ``img_shapes`` (frame, rows, cols), centred: row r of an
  R-row image sits at r - ceil(R / 2), and the text's positions start at max(R // 2, C // 2) on every axis. A
  dense grid at one level goes through the model's own table (RALU's half-resolution stage is then exactly the
  model's smaller image, text positions moved with it). Mixed or partial token sets get their rows computed
  here with the same arithmetic (`rope_rows`), in units of the coarsest level present (upsampled children on
  half offsets), and handed to the transformer in place of its table.
* True CFG: two transformer calls (the negative prompt's text may be another length), combined, then rescaled per
  token to the conditional prediction's norm, as the pipeline does.
* Latents: 16 channels packed 2 x 2 into 64 (ralu's token layout); the VAE is a causal 3-D one whose latents are
  5-D (one frame) and normalised per channel by mean and std.
* The sigmas: ``linspace(1, 1/n, n)`` shifted by mu (from the token count) and stretched to the scheduler's
  terminal sigma (0.02), by the scheduler itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from ralu_core.errors import CallError
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import ConfigReader, iter_chunks
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.dit import DiTAdapter, DiTCall, packed_size_rule, swapped_submodule
from ralu_core.pipelines.kv_store import processor_problems
from ralu_core.pipelines.pipeline_call import DiffusersImages, vae_device
from ralu_core.sampling.tokens import TokenGrid, TokenState, gather_tokens
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, StepInfo, TokenwiseFeatures
from ralu_qwenimage.attention import DEFAULT_PROCESSOR, QwenTokenProcessor, attention_modules, attention_problems

PATCH = 2  # 2 x 2 latent pixels per token, as FLUX
UNMODELLED = ("use_layer3d_rope", "zero_cond_t", "use_additional_t_cond")
"""Transformer options of Qwen-Image's edit and layered models, whose positions and modulation ralu does not model."""


@attrs.frozen(kw_only=True)
class QwenImageArguments(PipelineArguments):
    """QwenImagePipeline.__call__'s arguments, bound like the pipeline binds them."""

    pipeline_name: ClassVar[str] = "QwenImagePipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        "sigmas": "custom sigmas (recipes own the schedule)",
        "callback_on_step_end": "step-end callbacks (use the ralu_on_step_end hook)",
    }

    prompt: str | list[str] | None = None
    negative_prompt: str | list[str] | None = None
    true_cfg_scale: float = 4.0
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    sigmas: list[float] | None = None
    guidance_scale: float | None = None
    num_images_per_prompt: int = 1
    generator: Any = None
    latents: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    prompt_embeds_mask: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds_mask: torch.Tensor | None = None
    output_type: str | None = "pil"
    return_dict: bool = True
    attention_kwargs: dict[str, Any] | None = None
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Any = None
    max_sequence_length: int = 512

    @property
    def joint_attention_kwargs(self) -> dict[str, Any] | None:
        return self.attention_kwargs

    @property
    def has_negative(self) -> bool:
        return self.negative_prompt is not None or self.negative_prompt_embeds is not None


def qwen_grid(pipe: Any, height: int, width: int) -> TokenGrid:
    """The packed-latent token grid QwenImagePipeline uses for an image size."""
    unit = pipe.vae_scale_factor * PATCH
    channels = int(pipe.transformer.config.in_channels) // (PATCH * PATCH)
    return TokenGrid(rows=height // unit, cols=width // unit, channels=channels, patch=PATCH)


def centre(rows: int) -> int:
    """How far QwenEmbedRope's centred positions sit below the grid index: ceil(rows / 2)."""
    return rows - rows // 2


def rope_rows(embed: Any, positions: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, N, head_dim / 2) complex RoPE of tokens at float `positions` (B, N, 2) on a `rows` x `cols` frame, as
    QwenEmbedRope computes it for integer positions (frame 0, centred rows and columns), bit for bit there."""
    theta, axes = embed.theta, list(embed.axes_dim)
    centred = positions.clone()
    centred[..., 0] -= centre(rows)
    centred[..., 1] -= centre(cols)
    centred = centred.to(torch.float32)

    def angles(p: torch.Tensor, dim: int) -> torch.Tensor:
        # Made on the positions' device: nothing is copied from the host inside the step loop.
        inverse = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, device=p.device).to(torch.float32).div(dim))
        turns = p[..., None] * inverse
        return torch.polar(torch.ones_like(turns), turns)

    frame = angles(torch.zeros_like(centred[..., 0]), axes[0])
    return torch.cat([frame, angles(centred[..., 0], axes[1]), angles(centred[..., 1], axes[2])], dim=-1)


class GivenRope(torch.nn.Module):
    """Stands in for the transformer's ``pos_embed`` during one evaluation: the image tokens' RoPE as given (one
    table, or one per batch row), the text's from the model's own table at the frame's text offset."""

    def __init__(self, original: Any, image: torch.Tensor, text_start: int) -> None:
        super().__init__()
        self.original, self.image, self.text_start = original, image, text_start

    def forward(
        self, video_fhw: Any, device: torch.device | None = None, max_txt_seq_len: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The model's own table on the device, kept there by the model (a plain attribute moved once per device).
        table, _ = self.original._get_device_freqs(self.image.device)
        return self.image, table[self.text_start : self.text_start + int(max_txt_seq_len)]


class QwenImages(DiffusersImages):
    """QwenImagePipeline's decode: 5-D latents (one frame), un-normalised by the VAE's per-channel mean and std."""

    def __init__(self, pipe: Any, output_type: str | None, return_dict: bool) -> None:
        super().__init__(pipe, output_type, return_dict)
        # Made once, on the VAE's device, so that decoding inside the step loop (RALU's Canny selection) copies
        # nothing from the host.
        vae = pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.mean = torch.tensor(vae.config.latents_mean).view(shape).to(vae_device(vae), vae.dtype)
        self.inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(vae_device(vae), vae.dtype)

    def vae_latent(self, latent: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latent = latent[:, :, None].to(device=vae_device(vae), dtype=vae.dtype)
        return latent / self.inverse_std.to(latent.device) + self.mean.to(latent.device)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.pipe.vae.decode(self.vae_latent(latent), return_dict=False)[0][:, :, 0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def output(self, latent_image: torch.Tensor, latents: torch.Tensor, output_cls: Any) -> Any:
        if self.output_type == "latent":
            image: Any = latents
        else:
            decoded = self.pipe.vae.decode(self.vae_latent(latent_image), return_dict=False)[0][:, :, 0]
            image = self.pipe.image_processor.postprocess(decoded, output_type=self.output_type)
        self.pipe.maybe_free_model_hooks()
        return (image,) if not self.return_dict else output_cls(images=image)


class QwenImageCall(DiTCall):
    """One prepared QwenImagePipeline call."""

    def __init__(self, pipe: Any, args: QwenImageArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.grid = qwen_grid(pipe, height, width)
        self.images = QwenImages(pipe, args.output_type, args.return_dict)
        self.row_rope: torch.Tensor | None = None

        def encode(prompt: Any, embeds: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
            # Encoded once per prompt, then repeated per image here: diffusers 0.42's encode_prompt repeats the
            # embeddings per prompt (p0, p0, p1, p1) but the mask per batch (p0, p1, p0, p1), so with prompts of
            # different lengths and num_images_per_prompt > 1 its images would read other prompts' padding.
            embeds, mask = pipe.encode_prompt(
                prompt=prompt,
                prompt_embeds=embeds,
                prompt_embeds_mask=mask,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=args.max_sequence_length,
            )
            copies = args.num_images_per_prompt
            return embeds.repeat_interleave(copies, dim=0), None if mask is None else mask.repeat_interleave(copies, 0)

        self.embeds, self.mask = encode(args.prompt, args.prompt_embeds, args.prompt_embeds_mask)
        self.true_cfg = args.true_cfg_scale > 1 and args.has_negative
        if self.true_cfg:
            self.neg_embeds, self.neg_mask = encode(
                args.negative_prompt, args.negative_prompt_embeds, args.negative_prompt_embeds_mask
            )
            copies, count = args.num_images_per_prompt, self.embeds.shape[0]
            # One negative prompt serves every prompt. With one image per prompt and no padding its single row goes
            # in as the pipeline passes it (the transformer broadcasts it, bit for bit the pipeline's numbers);
            # otherwise, where the pipeline fails, it is repeated for every image.
            one_row = self.neg_mask is None and copies == 1  # a padded row would not broadcast in the attention
            if self.neg_embeds.shape[0] == copies != count and not one_row:
                self.neg_embeds = self.neg_embeds[:1].expand(count, -1, -1).contiguous()
                self.neg_mask = None if self.neg_mask is None else self.neg_mask[:1].expand(count, -1).contiguous()
            if self.neg_embeds.shape[0] not in (1, count):
                raise CallError(
                    f"got {self.neg_embeds.shape[0] // args.num_images_per_prompt} negative prompts for "
                    f"{self.embeds.shape[0] // args.num_images_per_prompt} prompts; give one per prompt"
                )
        self.dtype = self.embeds.dtype
        config = pipe.transformer.config
        self.guidance = (
            torch.full([1], args.guidance_scale, device=self.device, dtype=torch.float32)
            if config.guidance_embeds and args.guidance_scale is not None
            else None
        )
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        # QwenImagePipeline always computes mu (the scheduler ignores it unless it shifts with resolution).
        self.mu = self.schedule.shift_mu(self.grid.num_tokens, max_shift=1.15)
        self.default_shift = self.schedule.shift(self.mu)
        self.keep_keys_values(
            self.attention_modules,
            lambda original, layer: QwenTokenProcessor(original, layer, lambda: self.kv_store),
            slots=self.batch_size * (2 if self.true_cfg else 1),
        )

    def custom_sigmas(self, steps: int) -> list[float] | None:
        return list(np.linspace(1.0, 1 / steps, steps).tolist())

    def initial_noise(self) -> torch.Tensor:
        if self.args.latents is not None:
            latents: torch.Tensor = self.args.latents.to(device=self.device, dtype=self.dtype)
            expected = (self.batch_size, self.grid.num_tokens, self.grid.token_dim)
            if tuple(latents.shape) != expected:
                raise CallError(
                    f"`latents` must be packed Qwen-Image latents of shape {expected}, got {tuple(latents.shape)}"
                )
            return latents
        return self.pipe.prepare_latents(  # type: ignore[no-any-return]
            self.batch_size, self.grid.channels, self.height, self.width, self.dtype, self.device, self.generator
        )

    # --- tokens in, velocity out ----------------------------------------------------------------

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        level = state.coarsest_level
        rows, cols = self.grid.rows >> level, self.grid.cols >> level
        t = sigma.to(self.device) * self.num_train_timesteps
        layout = state.known_layout()
        if active is None and layout is not None and layout.raster:
            # A dense grid at one level: the model's own positions for an image of that many tokens.
            return self._guided(state.values, t, (rows, cols), None, slice(None), step, None, "")
        values, positions = state.values, state.positions()
        if active is not None:
            values, positions = gather_tokens(values, active), gather_tokens(positions, active)
        embed = self.pipe.transformer.pos_embed
        out = torch.empty_like(values)
        if values.shape[0] == 1 or self.positions_per_row():
            rope = rope_rows(embed, positions.to(self.device), rows, cols)
            shared = rope[0] if values.shape[0] == 1 else rope
            return self._guided(values, t, (rows, cols), shared, slice(None), step, active, "")
        # Processors that take one table per call: images at different positions are evaluated apart.
        for chunk in iter_chunks(positions):
            index = chunk.to(values.device)
            rope = rope_rows(embed, positions[chunk[:1]].to(self.device), rows, cols)[0]
            group = f"/images {','.join(str(int(r)) for r in chunk)}"
            tokens = None if active is None else active[index]
            out[index] = self._guided(values[index], t, (rows, cols), rope, chunk.tolist(), step, tokens, group)
        return out

    def _guided(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        frame: tuple[int, int],
        rope: torch.Tensor | None,
        rows: slice | list[int],
        step: StepInfo | None,
        active: torch.Tensor | None,
        group: str,
    ) -> torch.Tensor:
        """The pipeline's (true-CFG) prediction for batch `rows`, rescaled per token as the pipeline does."""
        prediction = self._transformer(x, t, frame, rope, rows, False, step, active, group)
        if not self.true_cfg:
            return prediction
        negative = self._transformer(x, t, frame, rope, rows, True, step, active, group)
        combined = negative + self.args.true_cfg_scale * (prediction - negative)
        cond_norm = torch.norm(prediction, dim=-1, keepdim=True)
        return combined * (cond_norm / torch.norm(combined, dim=-1, keepdim=True))

    def _transformer(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        frame: tuple[int, int],
        rope: torch.Tensor | None,
        rows: slice | list[int],
        negative: bool,
        step: StepInfo | None,
        active: torch.Tensor | None,
        group: str,
    ) -> torch.Tensor:
        embeds, mask = (self.neg_embeds, self.neg_mask) if negative else (self.embeds, self.mask)
        if isinstance(rows, list):
            if embeds.shape[0] > 1:  # one negative prompt for every image stays one row
                index = torch.tensor(rows, device=embeds.device)
                embeds, mask = embeds[index], None if mask is None else mask[index]
            slots = [r + (self.batch_size if negative else 0) for r in rows]
        else:
            slots = [r + (self.batch_size if negative else 0) for r in range(x.shape[0])]
        transformer = self.pipe.transformer
        timestep = t.expand(x.shape[0]).to(x.dtype)
        img_shapes = [[(1, *frame)]] * x.shape[0]
        positions = (
            swapped_submodule(transformer, "pos_embed", GivenRope(transformer.pos_embed, rope, max(frame) // 2))
            if rope is not None
            else nullcontext()
        )
        name = ("uncond" if negative else "cond") + group
        with self.denoiser_context(name, step, timestep[0]), self.kv_routing(slots, active), positions:
            out: torch.Tensor = transformer(
                hidden_states=x,
                timestep=timestep / 1000,
                guidance=None if self.guidance is None else self.guidance.expand(x.shape[0]),
                encoder_hidden_states_mask=mask,
                encoder_hidden_states=embeds,
                img_shapes=img_shapes,
                attention_kwargs=self.joint_attention_kwargs,
                return_dict=False,
            )[0]
        return out

    def attention_modules(self) -> dict[str, Any]:
        """The attention modules RAS's stand-in processors go on, by name."""
        return attention_modules(self.pipe.transformer)

    def stand_in_problems(self) -> list[str]:
        return processor_problems(self.attention_modules(), DEFAULT_PROCESSOR)

    # --- pixels ---------------------------------------------------------------------------------

    def finish(self, state: TokenState) -> Any:
        from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput

        latents = state.values  # packed, what QwenImagePipeline returns for output_type="latent"
        unpacked = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)[:, :, 0]
        return self.images.output(unpacked, latents, QwenImagePipelineOutput)


class QwenImageAdapter(DiTAdapter):
    """diffusers QwenImagePipeline (Qwen-Image and models of the same architecture)."""

    name: ClassVar[str] = "qwenimage"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("QwenImagePipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("qwen-image",)
    embedded_models: ClassVar[tuple[str, ...]] = ("qwenimage-tiny", "qwenimage-mid")
    baseline_recipe: ClassVar[str] = "qwenimage-baseline"
    default_recipe: ClassVar[str] = "ralu-qwenimage-4x"
    Arguments = QwenImageArguments
    architecture: ClassVar[str] = "Qwen-Image"
    size_rule_reads_transformer: ClassVar[bool] = False  # 2 x 2 packing whatever its config
    long_text_tokenizer: ClassVar[str | None] = None  # the pipeline cuts the prompt's hidden states itself
    blocks: ClassVar[ModelBlocks] = ModelBlocks(
        block_features={
            # Double-stream, as FLUX's: the joint attention (one module, image and text outputs) and the two
            # feed-forwards join their streams through gates.
            "QwenImageTransformerBlock": BlockFeatures(forecast=("attn", "img_mlp", "txt_mlp")),
        },
        token_features={
            # Text first in the joint attention; the image feed-forward runs per token, the attention (its
            # projections included) is reused whole.
            "QwenImageTransformerBlock": TokenwiseFeatures(
                attention="attn", text_first=True, image=("img_mlp",), text=("txt_mlp",)
            ),
        },
    )

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        return attention_problems(pipeline.transformer)

    def size_rule(self, vae_factor: int, transformer: Mapping[str, Any], coarsest_level: int) -> tuple[int, str]:
        return packed_size_rule(vae_factor, PATCH, coarsest_level, "2 x 2 packing")

    def size_rule_from_configs(self, read_config: ConfigReader, coarsest_level: int) -> tuple[int, str] | None:
        vae = read_config("vae")
        if vae is None or "temperal_downsample" not in vae:
            return None
        return self.size_rule(2 ** len(vae["temperal_downsample"]), {}, coarsest_level)

    def grid(self, pipeline: Any, height: int, width: int) -> TokenGrid:
        return qwen_grid(pipeline, height, width)

    def check_call(self, pipeline: Any, bound: QwenImageArguments, height: int, width: int) -> None:
        pipeline.check_inputs(
            bound.prompt,
            height,
            width,
            negative_prompt=bound.negative_prompt,
            prompt_embeds=bound.prompt_embeds,
            negative_prompt_embeds=bound.negative_prompt_embeds,
            prompt_embeds_mask=bound.prompt_embeds_mask,
            negative_prompt_embeds_mask=bound.negative_prompt_embeds_mask,
            max_sequence_length=bound.max_sequence_length,
        )
        config = pipeline.transformer.config
        if config.guidance_embeds and bound.guidance_scale is None:
            raise CallError("guidance_scale is required for a guidance-distilled Qwen-Image model")
        unmodelled = [name for name in UNMODELLED if config.get(name, False)]
        if unmodelled:
            raise CallError(
                f"this QwenImageTransformer2DModel sets {', '.join(unmodelled)} (an edit or layered model's "
                "conditioning), which ralu's token positions do not model; use QwenImagePipeline's own model"
            )
        if bound.num_inference_steps == 1 and pipeline.scheduler.config.get("shift_terminal"):
            raise CallError(
                "num_inference_steps=1 with a terminal sigma (shift_terminal) gives NaN sigmas in diffusers' "
                "scheduler; use at least 2 steps"
            )

    def make_call(self, pipeline: Any, bound: QwenImageArguments, height: int, width: int) -> QwenImageCall:
        return QwenImageCall(pipeline, bound, height, width)

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        from ralu_qwenimage.flops_profile import QwenImageFlopsProfile

        return QwenImageFlopsProfile.from_source(source)

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        from ralu_qwenimage.flops_profile import QwenImageFlopsProfile

        cfg = float(call_kwargs.get("true_cfg_scale", 4.0)) > 1 and (
            call_kwargs.get("negative_prompt") is not None or call_kwargs.get("negative_prompt_embeds") is not None
        )
        return QwenImageFlopsProfile(
            type(pipeline).__name__, dict(pipeline.transformer.config), dict(pipeline.vae.config), guidance=cfg
        )

    def build_embedded(self, name: str) -> Any:
        from ralu_qwenimage.testing import make_qwenimage_pipeline

        return make_qwenimage_pipeline(seed=0, size=name.removeprefix("qwenimage-"))

    def embedded_component_config(self, name: str, component: str) -> dict[str, Any] | None:
        from ralu_qwenimage.testing import size_config

        return size_config(component, name.removeprefix("qwenimage-"))
