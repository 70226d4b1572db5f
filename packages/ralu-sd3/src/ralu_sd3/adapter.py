"""The SD3 adapter: drives diffusers' StableDiffusion3Pipeline (SD3-medium, SD3.5 large and medium) and its
variants (`ralu_sd3.variants`); a call's tokens and transformer evaluation are `ralu_sd3.call.SD3Call`'s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import is_diffusers_pipeline
from ralu_core.pipelines.dit import DiTAdapter
from ralu_core.sampling.tokens import TokenGrid
from ralu_core.strategies.base import BlockFeatures, ModelBlocks, TokenwiseFeatures
from ralu_sd3.attention import attention_problems
from ralu_sd3.call import SD3Arguments, SD3Call, sd3_grid
from ralu_sd3.positions import SinCosGrid
from ralu_sd3.variants import SD3ControlNetArguments, SD3Img2ImgArguments, SD3InpaintArguments

__all__ = ["SD3Adapter", "SD3Arguments", "SD3Call", "sd3_grid"]

VARIANTS: tuple[type[SD3Arguments], ...] = (SD3Img2ImgArguments, SD3InpaintArguments, SD3ControlNetArguments)
"""The variant pipelines the adapter drives, by their arguments (each names its pipeline and makes its call)."""


class SD3Adapter(DiTAdapter):
    """diffusers StableDiffusion3Pipeline (SD3-medium, SD3.5-large, SD3.5-medium)."""

    name: ClassVar[str] = "sd3"
    pipeline_classes: ClassVar[tuple[str, ...]] = (
        "StableDiffusion3Pipeline",
        *(variant.pipeline_name for variant in VARIANTS),
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
        for arguments in VARIANTS:
            if is_diffusers_pipeline(pipeline, (arguments.pipeline_name,)):
                return arguments
        return SD3Arguments

    def check_call(self, pipeline: Any, bound: SD3Arguments, height: int, width: int) -> None:
        unit = int(pipeline.vae_scale_factor) * int(pipeline.transformer.config.patch_size)
        SinCosGrid.of(pipeline.transformer.pos_embed).check_fits(height // unit, width // unit)
        bound.check_inputs(pipeline, height, width)

    def make_call(self, pipeline: Any, bound: SD3Arguments, height: int, width: int) -> SD3Call:
        return bound.make_call(pipeline, height, width)

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
