"""The FLUX adapter: drives diffusers' FluxPipeline (FLUX.1-dev and schnell style models) and its variants
(`ralu_flux.variants`); a call's tokens and transformer evaluation are `ralu_flux.call.FluxCall`'s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ralu_core.errors import CallError
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import check_image_size, image_side, is_diffusers_pipeline
from ralu_core.pipelines.dit import DiTAdapter, packed_size_rule
from ralu_core.sampling.tokens import TokenGrid
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, TokenwiseFeatures
from ralu_flux.attention import attention_problems
from ralu_flux.call import PATCH, FluxArguments, FluxCall, flux_grid, latent_channels
from ralu_flux.variants import (
    FluxControlArguments,
    FluxControlNetArguments,
    FluxControlNetImg2ImgArguments,
    FluxControlNetInpaintArguments,
    FluxFillArguments,
    FluxImg2ImgArguments,
    FluxInpaintArguments,
    FluxKontextArguments,
)

__all__ = ["PATCH", "FluxAdapter", "FluxArguments", "FluxCall", "flux_grid", "latent_channels"]

VARIANTS: tuple[type[FluxArguments], ...] = (
    FluxControlNetImg2ImgArguments,
    FluxControlNetInpaintArguments,
    FluxImg2ImgArguments,
    FluxInpaintArguments,
    FluxFillArguments,
    FluxKontextArguments,
    FluxControlNetArguments,
    FluxControlArguments,
)
"""The variant pipelines the adapter drives, by their arguments (each names its pipeline and makes its call)."""


class FluxAdapter(DiTAdapter):
    """diffusers FluxPipeline (FLUX.1-dev, FLUX.1-schnell and models of the same architecture)."""

    name: ClassVar[str] = "flux"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("FluxPipeline", *(variant.pipeline_name for variant in VARIANTS))
    variants_not_driven: ClassVar[Mapping[str, str]] = {
        "FluxControlImg2ImgPipeline": "its transformer reads the control image's latents as extra channels of every "
        "token, from an input image",
        "FluxControlInpaintPipeline": "its transformer reads the control image's latents as extra channels of every "
        "token, and the unmasked region is kept at every step",
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
        return packed_size_rule(vae_factor, PATCH, coarsest_level, "2 x 2 packing")

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
        for arguments in VARIANTS:
            if is_diffusers_pipeline(pipeline, (arguments.pipeline_name,)):
                return arguments
        return FluxArguments

    def check_call(self, pipeline: Any, bound: FluxArguments, height: int, width: int) -> None:
        bound.check_inputs(pipeline, height, width)

    def make_call(self, pipeline: Any, bound: FluxArguments, height: int, width: int) -> FluxCall:
        return bound.make_call(pipeline, height, width)

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
