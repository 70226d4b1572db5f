"""The FLUX.2 adapter: drives diffusers' Flux2Pipeline (FLUX.2-dev, Flux2Transformer2DModel).

What FLUX.2 does differently from FLUX.1, all handled here:

* Latents: 32 VAE channels, patchified 2 x 2 into 128 per token (channel-major, ralu's token layout), and
  normalised per patchified channel by the VAE's BatchNorm statistics, which the decode undoes.
* Positions: 4-D ids (T, H, W, L) with RoPE theta 2000; image tokens at (0, row, col, 0), text tokens at
  (0, 0, 0, l). The transformer builds one table per call from the first image's ids, so images at different
  positions get a table per row through the stand-in processors of `ralu_flux2.attention`. Mixed-resolution
  tokens get float ids, as FLUX.1's: the coarsest level's grid, upsampled children on half offsets.
* The shift: ``mu = compute_empirical_mu(tokens, steps)`` depends on the step count; the pipeline's own sigmas are
  computed with the mu of the steps asked for. NT-DM's base shift is exp(mu) at the pipeline's default 50 steps.
* Guidance is an embedded scalar (no CFG batch); ``image`` is the first positional argument of ``__call__``.
* Reference images (``image``): their tokens ride along at T = 10, 20, ..., at full resolution at every stage (the
  pipeline's references keep their own size whatever the output's), after the generated tokens, or before them
  where RAS's key/value store reads the generated tokens as the last ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from ralu_core.errors import CallError, UnsupportedArgumentError
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import iter_chunks
from ralu_core.pipelines.arguments import PipelineArguments
from ralu_core.pipelines.dit import DiTAdapter, DiTCall, packed_size_rule
from ralu_core.pipelines.pipeline_call import DiffusersImages, vae_device
from ralu_core.pipelines.rotary import Rotary
from ralu_core.sampling.tokens import TokenGrid, TokenState, gather_tokens, tokens_to_image
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, StepInfo, TokenwiseFeatures
from ralu_flux2.attention import attention_modules, attention_problems, stand_in

PATCH = 2  # 2 x 2 latent pixels per token
DEFAULT_STEPS = 50


@attrs.frozen(kw_only=True)
class Flux2Arguments(PipelineArguments):
    """Flux2Pipeline.__call__'s arguments, bound like the pipeline binds them (``image`` first)."""

    pipeline_name: ClassVar[str] = "Flux2Pipeline"
    unsupported_features: ClassVar[dict[str, str]] = {
        "sigmas": "custom sigmas (recipes own the schedule)",
        "callback_on_step_end": "step-end callbacks (use the ralu_on_step_end hook)",
    }

    image: Any = None
    prompt: str | list[str] | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    sigmas: list[float] | None = None
    guidance_scale: float | None = 4.0
    num_images_per_prompt: int = 1
    generator: Any = None
    latents: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    output_type: str | None = "pil"
    return_dict: bool = True
    attention_kwargs: dict[str, Any] | None = None
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Any = None
    max_sequence_length: int = 512
    text_encoder_out_layers: tuple[int, ...] = (10, 20, 30)
    caption_upsample_temperature: float | None = None

    @property
    def joint_attention_kwargs(self) -> dict[str, Any] | None:
        return self.attention_kwargs

    def check_supported(self) -> None:
        texts = [self.image] if isinstance(self.image, str) else self.image
        if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
            raise CallError(
                "Flux2Pipeline's first positional argument is `image` (reference images), and text was given there: "
                "pass the prompt by name, `prompt=...`"
            )
        if self.caption_upsample_temperature:  # the pipeline ignores 0 and None
            raise UnsupportedArgumentError(
                "ralu does not support caption upsampling with Flux2Pipeline yet; upsample the prompt with "
                "pipe.upsample_prompt first"
            )
        super().check_supported()


def reference_images(pipe: Any, image: Any) -> list[torch.Tensor] | None:
    """The reference images preprocessed as Flux2Pipeline preprocesses them: each capped at 1024 x 1024 pixels of
    area, cropped to multiples of 16; None without references."""
    if image is None:
        return None
    processed = []
    for img in image if isinstance(image, list) else [image]:
        pipe.image_processor.check_image_input(img)
        img, width, height = reference_size(pipe, img)
        processed.append(pipe.image_processor.preprocess(img, height=height, width=width, resize_mode="crop"))
    return processed


def reference_size(pipe: Any, img: Any) -> tuple[Any, int, int]:
    """(the image capped in area, width, height) of a reference as the pipeline sizes it."""
    width, height = img.size
    if width * height > 1024 * 1024:
        img = pipe.image_processor._resize_to_target_area(img, 1024 * 1024)
        width, height = img.size
    multiple = pipe.vae_scale_factor * 2
    return img, width // multiple * multiple, height // multiple * multiple


def flux2_grid(pipe: Any, height: int, width: int) -> TokenGrid:
    """The packed-latent token grid Flux2Pipeline uses for an image size."""
    unit = pipe.vae_scale_factor * PATCH
    channels = int(pipe.transformer.config.in_channels) // (PATCH * PATCH)
    return TokenGrid(rows=height // unit, cols=width // unit, channels=channels, patch=PATCH)


class Flux2Images(DiffusersImages):
    """Flux2Pipeline's decode: the patchified latents un-normalised by the VAE's BatchNorm statistics."""

    def vae_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 32, H, W) model latent -> what the pipeline hands its VAE, in the latent's dtype as it does."""
        pipe, vae = self.pipe, self.pipe.vae
        patches = pipe._patchify_latents(latent)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(patches.device, patches.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
            patches.device, patches.dtype
        )
        # The VAE's execution device, as the pipeline: under model offload its weights wait on the CPU until decode.
        return pipe._unpatchify_latents(patches * std + mean).to(vae_device(vae))  # type: ignore[no-any-return]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """A clean estimate (RALU's Canny selection, in float32) decoded in the VAE's dtype."""
        vae = self.pipe.vae
        image: torch.Tensor = vae.decode(self.vae_latent(latent).to(vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def output(self, latent_image: torch.Tensor, latents: torch.Tensor, output_cls: Any) -> Any:
        if self.output_type == "latent":
            image: Any = latents
        else:
            decoded = self.pipe.vae.decode(self.vae_latent(latent_image), return_dict=False)[0]
            image = self.pipe.image_processor.postprocess(decoded, output_type=self.output_type)
        self.pipe.maybe_free_model_hooks()
        return (image,) if not self.return_dict else output_cls(images=image)


class Flux2Call(DiTCall):
    """One prepared Flux2Pipeline call."""

    def __init__(self, pipe: Any, args: Flux2Arguments, height: int, width: int) -> None:
        super().__init__(pipe, args, height, width)
        self.grid = flux2_grid(pipe, height, width)
        self.images = Flux2Images(pipe, args.output_type, args.return_dict)
        self.row_rotary: Rotary | None = None
        self.embeds, text_ids = pipe.encode_prompt(
            prompt=args.prompt,
            prompt_embeds=args.prompt_embeds,
            device=self.device,
            num_images_per_prompt=args.num_images_per_prompt,
            max_sequence_length=args.max_sequence_length,
            text_encoder_out_layers=args.text_encoder_out_layers,
        )
        self.text_ids = text_ids[0]  # the transformer reads the first row
        self.references = reference_images(pipe, args.image)
        self.riders: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dtype = self.embeds.dtype
        assert args.guidance_scale is not None  # check_call refused None
        self.guidance = torch.full([1], args.guidance_scale, device=self.device, dtype=torch.float32)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.mu = self.empirical_mu(DEFAULT_STEPS)
        self.default_shift = math.exp(self.mu)
        self.keep_keys_values(
            self.attention_modules,
            lambda original, layer: stand_in(original, layer, lambda: self.kv_store, lambda: self.row_rotary),
            slots=self.batch_size,
        )

    def empirical_mu(self, steps: int) -> float:
        """The pipeline's mu for this call's tokens at `steps` steps (``compute_empirical_mu``)."""
        return float(self.schedule.helper("compute_empirical_mu")(image_seq_len=self.grid.num_tokens, num_steps=steps))

    def custom_sigmas(self, steps: int) -> list[float] | None:
        if getattr(self.pipe.scheduler.config, "use_flow_sigmas", False):
            return None
        return list(np.linspace(1.0, 1 / steps, steps).tolist())

    def pipeline_sigmas(self, steps: int) -> torch.Tensor:
        return self.schedule.sigmas(steps, self.empirical_mu(steps), self.custom_sigmas(steps))

    def initial_noise(self) -> torch.Tensor:
        if self.args.latents is not None:
            latents: torch.Tensor = self.args.latents.to(device=self.device, dtype=self.dtype)
            expected = (self.batch_size, self.grid.token_dim, self.grid.rows, self.grid.cols)
            if tuple(latents.shape) != expected:
                raise CallError(
                    f"`latents` must be patchified FLUX.2 latents of shape {expected}, got {tuple(latents.shape)}"
                )
        channels = self.grid.channels
        packed, _ = self.pipe.prepare_latents(
            self.batch_size,
            channels,
            self.height,
            self.width,
            self.dtype,
            self.device,
            self.generator,
            self.args.latents,
        )
        # The reference images are encoded after the noise is drawn, as the pipeline does (their encode draws nothing).
        self.riders = self.reference_tokens()
        return packed  # type: ignore[no-any-return]

    def reference_tokens(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The reference images' tokens, (B, R, 128), and their ids, (R, 4) with T = 10, 20, ..., as the pipeline
        makes them; None without references. They ride along with the generated tokens at full resolution at every
        stage: the pipeline's references keep their own size whatever the output's."""
        if self.references is None:
            return None
        latents, ids = self.pipe.prepare_image_latents(
            images=self.references,
            batch_size=self.batch_size,
            generator=self.generator,
            device=self.device,
            dtype=self.pipe.vae.dtype,
        )
        return latents, ids[0].to(device=self.device, dtype=torch.float32)

    # --- tokens in, velocity out ----------------------------------------------------------------

    def _ids(self, positions: torch.Tensor) -> torch.Tensor:
        """(N, 4) ids (0, row, col, 0) of tokens at (N, 2) float positions, in float32 (half offsets stay exact)."""
        ids = torch.zeros(positions.shape[0], 4, dtype=torch.float32, device=self.device)
        ids[:, 1:3] = positions.to(device=self.device, dtype=torch.float32)
        return ids

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        values, positions = state.values, state.positions()
        if active is not None:
            values, positions = gather_tokens(values, active), gather_tokens(positions, active)
        t = sigma.to(self.device) * self.num_train_timesteps
        layout = state.known_layout()
        shared = values.shape[0] == 1 or (active is None and layout is not None and layout.raster)
        if shared:
            return self._transformer(values, t, self._ids(positions[0]), slice(None), step, active, "")
        if self.positions_per_row():
            embed = self.pipe.transformer.pos_embed
            tables = [
                embed(torch.cat([self.text_ids.float(), self._with_riders(None, self._ids(p))[1]])) for p in positions
            ]
            self.row_rotary = (torch.stack([c for c, _ in tables]), torch.stack([s for _, s in tables]))
            try:
                return self._transformer(values, t, self._ids(positions[0]), slice(None), step, active, "")
            finally:
                self.row_rotary = None
        # Processors that take one table per call: images at different positions are evaluated apart.
        out = torch.empty_like(values)
        for chunk in iter_chunks(positions):
            index = chunk.to(values.device)
            tokens = None if active is None else active[index]
            group = f"/images {','.join(str(int(r)) for r in chunk)}"
            ids = self._ids(positions[int(chunk[0])])
            out[index] = self._transformer(values[index], t, ids, chunk.tolist(), step, tokens, group)
        return out

    def _transformer(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        ids: torch.Tensor,
        rows: slice | list[int],
        step: StepInfo | None,
        active: torch.Tensor | None,
        group: str,
    ) -> torch.Tensor:
        transformer = self.pipe.transformer
        index = rows if isinstance(rows, slice) else torch.tensor(rows, device=self.device)
        embeds = self.embeds[index]
        slots = list(range(x.shape[0])) if isinstance(rows, slice) else rows
        count = x.shape[1]
        x, ids = self._with_riders(index, ids, x)
        timestep = t.expand(x.shape[0]).to(x.dtype)
        with self.denoiser_context("cond" + group, step, timestep[0]), self.kv_routing(slots, active):
            out: torch.Tensor = transformer(
                hidden_states=x.to(transformer.dtype),
                timestep=timestep / 1000,
                guidance=self.guidance.expand(x.shape[0]),
                encoder_hidden_states=embeds,
                txt_ids=self.text_ids[None],  # (1, S, 4): the transformer reads the first row, as the pipeline's
                img_ids=ids[None],
                joint_attention_kwargs=self.joint_attention_kwargs,
                return_dict=False,
            )[0]
        return out[:, -count:] if self._riders_first() else out[:, :count]

    def _riders_first(self) -> bool:
        """Whether the reference tokens go before the generated ones: where RAS's key/value store reads the
        generated tokens as the sequence's last ones (then the references are computed with the text, never
        cached); otherwise after them, as the pipeline places them."""
        return self.riders is not None and self.kv_store is not None

    def _with_riders(
        self, rows: slice | torch.Tensor | None, ids: torch.Tensor, x: torch.Tensor | None = None
    ) -> tuple[Any, torch.Tensor]:
        """`x` (batch `rows`) and its `ids` with the reference tokens and their ids around them; as given without
        references."""
        if self.riders is None:
            return x, ids
        values, rider_ids = self.riders
        first = self._riders_first()
        ids = torch.cat([rider_ids, ids] if first else [ids, rider_ids])
        if x is None or rows is None:
            return x, ids
        riders = values[rows].to(x.dtype)
        return torch.cat([riders, x] if first else [x, riders], dim=1), ids

    def attention_modules(self) -> dict[str, Any]:
        """The attention modules RAS's stand-in processors go on, by name: the transformer's."""
        return attention_modules(self.pipe.transformer)

    def stand_in_problems(self) -> list[str]:
        return attention_problems(self.pipe.transformer)

    # --- pixels ---------------------------------------------------------------------------------

    def finish(self, state: TokenState) -> Any:
        from diffusers.pipelines.flux2.pipeline_output import Flux2PipelineOutput

        latents = state.values  # packed, what Flux2Pipeline returns for output_type="latent"
        image = tokens_to_image(latents, self.grid.rows, self.grid.cols, self.grid.channels, PATCH)
        return self.images.output(image, latents, Flux2PipelineOutput)


def text_tokens(call_kwargs: Mapping[str, Any]) -> int:
    """The text tokens a call's transformer passes read: the embeddings given, or the pipeline's padded length."""
    embeds = call_kwargs.get("prompt_embeds")
    return int(embeds.shape[1]) if embeds is not None else int(call_kwargs.get("max_sequence_length", 512))


class Flux2Adapter(DiTAdapter):
    """diffusers Flux2Pipeline (FLUX.2-dev and models of the same architecture)."""

    name: ClassVar[str] = "flux2"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("Flux2Pipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("flux2-dev",)
    embedded_models: ClassVar[tuple[str, ...]] = ("flux2-tiny", "flux2-mid")
    baseline_recipe: ClassVar[str] = "flux2-baseline"
    default_recipe: ClassVar[str] = "ralu-flux2-4x"
    Arguments = Flux2Arguments
    architecture: ClassVar[str] = "FLUX.2"
    size_rule_reads_transformer: ClassVar[bool] = False  # 2 x 2 patchifying whatever its config
    long_text_tokenizer: ClassVar[str | None] = None  # the chat template is cut by the pipeline itself
    blocks: ClassVar[ModelBlocks] = ModelBlocks(
        last_block_returns_text=False,  # the single-stream blocks return text and image as one sequence
        block_features={
            # Double-stream: the joint attention (image and text outputs) and the two feed-forwards, gated.
            "Flux2TransformerBlock": BlockFeatures(forecast=("attn", "ff", "ff_context")),
            # Single-stream: the fused attention + feed-forward output (one module).
            "Flux2SingleTransformerBlock": BlockFeatures(forecast=("attn",)),
        },
        token_features={
            "Flux2TransformerBlock": TokenwiseFeatures(
                attention="attn", text_first=True, image=("ff",), text=("ff_context",)
            ),
        },
    )

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        return attention_problems(pipeline.transformer)

    def size_rule(self, vae_factor: int, transformer: Mapping[str, Any], coarsest_level: int) -> tuple[int, str]:
        return packed_size_rule(vae_factor, PATCH, coarsest_level, "2 x 2 patches")

    def grid(self, pipeline: Any, height: int, width: int) -> TokenGrid:
        return flux2_grid(pipeline, height, width)

    def size(self, pipeline: Any, coarsest_level: int, bound: Any) -> tuple[int, int]:
        if bound.image is None or (bound.height and bound.width):
            return super().size(pipeline, coarsest_level, bound)
        # The output takes the first reference's size where the call gives none, as the pipeline sizes it.
        first = bound.image[0] if isinstance(bound.image, list) else bound.image
        if not hasattr(first, "size") or callable(first.size):
            raise CallError("Flux2Pipeline's reference images are PIL images (it sizes them by `image.size`)")
        _, width, height = reference_size(pipeline, first)
        return super().size(
            pipeline, coarsest_level, attrs.evolve(bound, height=bound.height or height, width=bound.width or width)
        )

    def check_call(self, pipeline: Any, bound: Flux2Arguments, height: int, width: int) -> None:
        if bound.guidance_scale is None:
            raise CallError("Flux2Pipeline needs a guidance_scale (its embedded guidance; 4.0 by default)")
        references = [] if bound.image is None else bound.image if isinstance(bound.image, list) else [bound.image]
        if any(not hasattr(img, "size") or callable(img.size) for img in references):
            raise CallError("Flux2Pipeline's reference images are PIL images (it sizes them by `image.size`)")
        pipeline.check_inputs(
            bound.prompt,
            height,
            width,
            prompt_embeds=bound.prompt_embeds,
            callback_on_step_end_tensor_inputs=bound.callback_on_step_end_tensor_inputs,
        )

    def make_call(self, pipeline: Any, bound: Flux2Arguments, height: int, width: int) -> Flux2Call:
        return Flux2Call(pipeline, bound, height, width)

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        from ralu_flux2.flops_profile import Flux2FlopsProfile

        return Flux2FlopsProfile.from_source(source)

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        from ralu_flux2.flops_profile import Flux2FlopsProfile

        return Flux2FlopsProfile(
            type(pipeline).__name__,
            dict(pipeline.transformer.config),
            dict(pipeline.vae.config),
            text_tokens=text_tokens(call_kwargs),
        )

    def build_embedded(self, name: str) -> Any:
        from ralu_flux2.testing import make_flux2_pipeline

        return make_flux2_pipeline(seed=0, size=name.removeprefix("flux2-"))

    def embedded_component_config(self, name: str, component: str) -> dict[str, Any] | None:
        from ralu_flux2.testing import size_config

        return size_config(component, name.removeprefix("flux2-"))
