"""The Lumina-Next adapter: drives diffusers' LuminaPipeline (Lumina-Next-SFT, LuminaNextDiT2DModel).

What Lumina does differently, all handled here:

* Time runs the other way: the transformer gets ``1 - t/1000`` (0 is noise) and predicts data minus noise,
  so the velocity the engine integrates is its output negated. It returns twice the latent channels (a
  learned sigma); the first half is the prediction.
* Classifier-free guidance: the batch is [cond; uncond], and guidance moves latent channels 0-2 only
  (channel 3 keeps the conditional prediction), as the pipeline does "for exact reproducibility".
* Positions: complex RoPE from a 384 x 384 table (built per step, linearly or NTK-scaled by the image's size
  against the model's default, depending on the time and ``scaling_watershed``). A token takes the row of
  its top-left full-resolution cell: a half-resolution token at cell (2i, 2j) gets what the pipeline gives
  token (i, j) of a half-size image (its linear scaling by 1/2), so RALU's first stage is the model's own
  smaller image. The transformer patchifies inside ``forward``; mixed or partial token sets go through it as
  a strip of patches with a patch embedding that returns each image's RoPE rows.
* Proportional attention: softmax scale sqrt(log_4096(N)) / sqrt(d), N the key length: the tokens the stage
  attends (the half-resolution stage, a smaller image to the model, uses its own count; see docs/lumina.md).
* Text enters by cross-attention only; a Gemma encoder with an attention mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from ralu_core.errors import CallError
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.diffusers_private import describe_block
from ralu_core.pipelines.dit import DiTAdapter, DiTCall, swapped_submodule
from ralu_core.sampling.contract import BoundCall
from ralu_core.sampling.tokens import TokenGrid, TokenState, gather_tokens, image_to_tokens, tokens_to_image
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, StepInfo, TokenwiseFeatures
from ralu_lumina.attention import CachedKVLuminaProcessor, attention_modules, attention_problems

PATCH = 2
ROPE_GRID = 384
"""The side of the RoPE table LuminaPipeline builds: image sides up to 384 tokens (6144 px)."""
GUIDED_CHANNELS = 3


@attrs.frozen(kw_only=True)
class LuminaArguments(PipelineArguments):
    """LuminaPipeline.__call__'s arguments, bound like the pipeline binds them."""

    pipeline_name: ClassVar[str] = "LuminaPipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        "sigmas": "custom sigmas (recipes own the schedule)",
        "callback_on_step_end": "step-end callbacks (use the ralu_on_step_end hook)",
    }

    prompt: str | list[str] | None = None
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float = 4.0
    negative_prompt: str | list[str] | None = None
    sigmas: list[float] | None = None
    num_images_per_prompt: int = 1
    generator: Any = None
    latents: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    prompt_attention_mask: torch.Tensor | None = None
    negative_prompt_attention_mask: torch.Tensor | None = None
    output_type: str | None = "pil"
    return_dict: bool = True
    clean_caption: bool = True
    max_sequence_length: int = 256
    scaling_watershed: float = 1.0
    proportional_attn: bool = True
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Any = None

    @property
    def joint_attention_kwargs(self) -> None:
        return None  # LuminaPipeline builds its attention kwargs itself


def lumina_grid(pipe: Any, height: int, width: int) -> TokenGrid:
    """The patch token grid LuminaPipeline's transformer uses for an image size."""
    unit = pipe.vae_scale_factor * PATCH
    return TokenGrid(
        rows=height // unit, cols=width // unit, channels=int(pipe.transformer.config.in_channels), patch=PATCH
    )


class LuminaCall(DiTCall):
    """One prepared LuminaPipeline call."""

    def __init__(self, pipe: Any, args: LuminaArguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.grid = lumina_grid(pipe, height, width)
        self.cfg = args.guidance_scale > 1.0
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            args.prompt,
            self.cfg,
            negative_prompt=args.negative_prompt,
            num_images_per_prompt=args.num_images_per_prompt,
            device=self.device,
            prompt_embeds=args.prompt_embeds,
            negative_prompt_embeds=args.negative_prompt_embeds,
            prompt_attention_mask=args.prompt_attention_mask,
            negative_prompt_attention_mask=args.negative_prompt_attention_mask,
            clean_caption=args.clean_caption,
        )
        # The pipeline's CFG layout: one batch of [cond; uncond].
        self.embeds = torch.cat([embeds, negative]) if self.cfg else embeds
        self.text_mask = torch.cat([mask, negative_mask]) if self.cfg else mask
        self.dtype = embeds.dtype
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.default_shift = self.schedule.shift(None)
        self.attention_kwargs: dict[str, Any] = {}
        if args.proportional_attn:
            self.attention_kwargs["base_sequence_length"] = (pipe.default_image_size // 16) ** 2
        self.scaling_factor = (width * height / pipe.default_image_size**2) ** 0.5
        self._tables: dict[tuple[float, float], torch.Tensor] = {}
        self.keep_keys_values(
            lambda: attention_modules(pipe.transformer),
            lambda original, layer: CachedKVLuminaProcessor(original, layer, lambda: self.kv_store),
            slots=self.batch_size * (2 if self.cfg else 1),
        )

    def initial_noise(self) -> torch.Tensor:
        return image_to_tokens(self.latent_image_noise(), PATCH)

    def rope_table(self, timestep: float) -> torch.Tensor:
        """The pipeline's (384, 384, head_dim / 2) RoPE table at this model time (its time-aware scaling), on
        the device; one per scaling, kept for the call."""
        from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

        factors = (self.scaling_factor, 1.0) if timestep < self.args.scaling_watershed else (1.0, self.scaling_factor)
        if factors not in self._tables:
            table = get_2d_rotary_pos_embed_lumina(
                self.pipe.transformer.head_dim, ROPE_GRID, ROPE_GRID, linear_factor=factors[0], ntk_factor=factors[1]
            )
            self._tables[factors] = table.to(self.device)
        return self._tables[factors]

    def model_time(self, sigma: torch.Tensor, step: StepInfo | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The scheduler's timestep t (0-1000) and Lumina's time ``1 - t/1000`` as the pipeline computes them,
        and Lumina's time on the host for the RoPE scaling (from the step, so that the device is not read)."""
        t = sigma.to(self.device) * self.num_train_timesteps
        on_host = np.float32(step.sigma if step is not None else float(sigma))  # float32 arithmetic, as on the device
        value = float(
            np.float32(1) - on_host * np.float32(self.num_train_timesteps) / np.float32(self.num_train_timesteps)
        )
        return t, 1 - t / self.num_train_timesteps, value

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        t, timestep, value = self.model_time(sigma, step)
        table = self.rope_table(value)
        layout = state.known_layout()
        if active is None and layout is not None and layout.raster:  # a dense grid: the model's own forward
            level = next(level for level, count in enumerate(layout.counts) if count)
            rows, cols = self.grid.rows >> level, self.grid.cols >> level
            latent = tokens_to_image(state.values, rows, cols, self.grid.channels, PATCH)
            out = self._evaluate(latent, t, timestep, table[:: 2**level, :: 2**level], step)
            return image_to_tokens(out, PATCH)
        values, cells = state.values, state.cells
        if active is not None:
            values, cells = gather_tokens(values, active), gather_tokens(cells, active)
        rope = table[cells[..., 0], cells[..., 1]]  # each image's rows: (B, M, head_dim / 2)
        strip = tokens_to_image(values, 1, values.shape[1], self.grid.channels, PATCH)
        with strip_rope(self.pipe.transformer, torch.cat([rope, rope]) if self.cfg else rope):
            out = self._evaluate(strip, t, timestep, table, step, active)
        return image_to_tokens(out, PATCH)

    def _evaluate(
        self,
        latent: torch.Tensor,
        t: torch.Tensor,
        timestep: torch.Tensor,
        table: torch.Tensor,
        step: StepInfo | None,
        active: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model on a (B, C, h, w) latent (a dense grid or a strip of tokens), guided and negated as the
        pipeline does: one batch of [cond; uncond] in one cache context ("cond_uncond")."""
        batch = torch.cat([latent, latent]) if self.cfg else latent
        if active is not None and self.cfg:
            active = torch.cat([active, active])
        with (
            self.denoiser_context("cond_uncond" if self.cfg else "cond", step, t),
            self.kv_routing(range(batch.shape[0]), active),
        ):
            out = self.pipe.transformer(
                hidden_states=batch,
                timestep=timestep.expand(batch.shape[0]),
                encoder_hidden_states=self.embeds,
                encoder_mask=self.text_mask,
                image_rotary_emb=table,
                cross_attention_kwargs=self.attention_kwargs,
                return_dict=False,
            )[0]
        out = out.chunk(2, dim=1)[0]  # the prediction; the learned sigma is not used
        if self.cfg:
            cond, uncond = out.chunk(2)
            guided = uncond[:, :GUIDED_CHANNELS] + self.args.guidance_scale * (
                cond[:, :GUIDED_CHANNELS] - uncond[:, :GUIDED_CHANNELS]
            )
            out = torch.cat([guided, cond[:, GUIDED_CHANNELS:]], dim=1)
        return -out

    def finish(self, state: TokenState) -> Any:
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        latents = tokens_to_image(state.values, self.grid.rows, self.grid.cols, self.grid.channels, PATCH)
        return self.images.output(latents, latents, ImagePipelineOutput)


class _StripPatchEmbed(torch.nn.Module):
    """LuminaPatchEmbed for a strip of tokens: the same projection, and RoPE rows given per image."""

    def __init__(self, original: Any, rope: torch.Tensor) -> None:
        super().__init__()
        self.original, self.rope = original, rope

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, ...] | Any:
        embedded, mask, sizes, _ = self.original(x, freqs_cis[:1])
        return embedded, mask, sizes, self.rope


def strip_rope(transformer: Any, rope: torch.Tensor) -> AbstractContextManager[None]:
    """While inside, the transformer embeds a strip of tokens with `rope` (B, N, head_dim / 2) as their RoPE."""
    return swapped_submodule(transformer, "patch_embedder", _StripPatchEmbed(transformer.patch_embedder, rope))


def describe_lumina_blocks() -> None:
    """diffusers does not describe LuminaNextDiTBlock for its caches: it returns the image stream alone (the text
    is read by cross-attention and never changes). Said once, before caches hook into the blocks."""
    from diffusers.models.transformers.lumina_nextdit2d import LuminaNextDiTBlock

    describe_block(LuminaNextDiTBlock, image_index=0, text_index=None)


class LuminaAdapter(DiTAdapter):
    """diffusers LuminaPipeline (Lumina-Next-SFT and models of the same architecture)."""

    name: ClassVar[str] = "lumina"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("LuminaPipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("lumina-next-sft",)
    embedded_models: ClassVar[tuple[str, ...]] = ("lumina-tiny",)
    baseline_recipe: ClassVar[str] = "lumina-baseline"
    default_recipe: ClassVar[str] = "ralu-lumina-4x"
    Arguments = LuminaArguments
    architecture: ClassVar[str] = "Lumina-Next"
    size_rule_reads_transformer: ClassVar[bool] = False  # LuminaPipeline checks multiples of 16 whatever its config
    long_text_tokenizer: ClassVar[str | None] = None  # Gemma reads up to 256 tokens, cut by the pipeline
    blocks: ClassVar[ModelBlocks] = ModelBlocks(
        block_features={
            # The attention branch (self- and cross-attention mixed by a per-head gate, one output projection,
            # then `norm2`) and the feed-forward branch (`ffn_norm2`) join the residual through tanh gates; the two
            # attentions and the feed-forward feed only them.
            "LuminaNextDiTBlock": BlockFeatures(
                forecast=("norm2", "ffn_norm2"), feeds_forecast=("attn1", "attn2", "feed_forward")
            ),
        },
        token_features={
            # Self-attention is over the image tokens alone (text enters by cross-attention). Both attentions
            # and their shared output projection are reused whole; the feed-forward runs per token. No
            # official ToCa code for Lumina: weight 1.
            "LuminaNextDiTBlock": TokenwiseFeatures(
                attention="attn1", text_first=False, image=("feed_forward",), also_reused=("attn2", "attn2.to_out.0")
            ),
        },
    )

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        return attention_problems(pipeline.transformer)

    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        describe_lumina_blocks()
        return super().bind(pipeline, coarsest_level, args, kwargs)

    def size_rule(self, vae_factor: int, transformer: Mapping[str, Any], coarsest_level: int) -> tuple[int, str]:
        # LuminaPipeline's vae_scale_factor is 8 whatever the VAE (and checks sides against 8 x 2).
        why = "for this recipe (VAE factor 8 x patch 2" + (
            " x 2 for its half-resolution stage)" if coarsest_level else ")"
        )
        return 8 * PATCH * 2**coarsest_level, why

    def grid(self, pipeline: Any, height: int, width: int) -> TokenGrid:
        return lumina_grid(pipeline, height, width)

    def check_call(self, pipeline: Any, bound: LuminaArguments, height: int, width: int) -> None:
        grid = lumina_grid(pipeline, height, width)
        if max(grid.rows, grid.cols) > ROPE_GRID:
            raise CallError(f"LuminaPipeline positions up to {ROPE_GRID} tokens a side ({ROPE_GRID * 16} px)")
        pipeline.check_inputs(
            bound.prompt,
            height,
            width,
            bound.negative_prompt,
            prompt_embeds=bound.prompt_embeds,
            negative_prompt_embeds=bound.negative_prompt_embeds,
            prompt_attention_mask=bound.prompt_attention_mask,
            negative_prompt_attention_mask=bound.negative_prompt_attention_mask,
        )

    def make_call(self, pipeline: Any, bound: LuminaArguments, height: int, width: int) -> LuminaCall:
        return LuminaCall(pipeline, bound, height, width)

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        from ralu_lumina.flops_profile import LuminaFlopsProfile

        return LuminaFlopsProfile.from_source(source)

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        from ralu_lumina.flops_profile import LuminaFlopsProfile

        return LuminaFlopsProfile(type(pipeline).__name__, dict(pipeline.transformer.config), dict(pipeline.vae.config))

    def build_embedded(self, name: str) -> Any:
        from ralu_lumina.testing import make_lumina_pipeline

        return make_lumina_pipeline(seed=0)

    def embedded_component_config(self, name: str, component: str) -> dict[str, Any] | None:
        from ralu_lumina.testing import size_config

        return size_config(component)
