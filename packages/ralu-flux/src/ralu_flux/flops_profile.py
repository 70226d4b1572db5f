"""FLOPs profile of FLUX architectures: FLUX.1-dev's shipped configs, or a local pipeline folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ralu_core.measurement.dit_profile import DiTFlopsProfile, Reuse
from ralu_core.measurement.flops import FlopCount
from ralu_core.measurement.text_encoders import CLIP_L, T5_XXL, clip_text_flops, t5_encoder_flops
from ralu_core.pipelines.adapter import check_image_size
from ralu_core.pipelines.pipeline_call import read_component_configs
from ralu_core.sampling.tokens import TokenGrid
from ralu_flux.attention import FluxTokenProcessor, attention_modules
from ralu_flux.flops import load_flux_dev_config, transformer_forward_flops, vae_decode_flops

PATCH = 2


class FluxFlopsProfile(DiTFlopsProfile):
    """Counts FluxTransformer2DModel forwards and AutoencoderKL decodes on the meta device."""

    def __init__(
        self,
        name: str,
        transformer: dict[str, Any],
        vae: dict[str, Any],
        *,
        baseline_steps: int,
        text_tokens: int = 512,
    ) -> None:
        self.name = name
        self.transformer = transformer
        self.vae = vae
        self.baseline_steps = baseline_steps
        self.text_tokens = text_tokens
        self.vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)

    @classmethod
    def from_source(cls, source: str | Path) -> FluxFlopsProfile:
        """``flux-dev`` (50-step baseline, as in the RALU paper), ``flux-schnell`` (4 steps) or a diffusers
        FluxPipeline folder."""
        if str(source) == "flux-dev":
            return cls("flux-dev", load_flux_dev_config("transformer"), load_flux_dev_config("vae"), baseline_steps=50)
        if str(source) == "flux-schnell":
            # FLUX.1-schnell: FLUX.1-dev's architecture without the guidance embedding, 4 steps, FluxPipeline's
            # 512 T5 tokens (the RALU paper's counts for it fit 512, not the 256 of its model card).
            transformer = {**load_flux_dev_config("transformer"), "guidance_embeds": False}
            return cls("flux-schnell", transformer, load_flux_dev_config("vae"), baseline_steps=4)
        transformer, vae = read_component_configs(source, "flux-dev", "FluxPipeline")
        return cls(Path(source).name, transformer, vae, baseline_steps=28)

    def grid(self, height: int, width: int) -> TokenGrid:
        check_image_size(height, width, self.vae_factor * PATCH, "for FLUX (VAE factor x 2 x 2 packing)")
        unit = self.vae_factor * PATCH
        return TokenGrid(
            rows=height // unit, cols=width // unit, channels=self.transformer["in_channels"] // 4, patch=PATCH
        )

    def transformer_forward(self, image_tokens: int, reuse: Reuse | None) -> FlopCount:
        return transformer_forward_flops(self.transformer, image_tokens, self.text_tokens, reuse=reuse)

    def cached_attention(self) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
        return attention_modules, FluxTokenProcessor

    def text_encoders(self) -> FlopCount:
        """CLIP-L over 77 tokens and T5-XXL over the call's `text_tokens`."""
        return clip_text_flops(CLIP_L) + t5_encoder_flops(T5_XXL, self.text_tokens)

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        return vae_decode_flops(self.vae, latent_height, latent_width)
