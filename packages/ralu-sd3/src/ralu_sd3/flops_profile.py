"""FLOPs profile of SD3 architectures: SD3-medium and SD3.5-large configs, a folder, or a loaded pipeline.

Counts are per image: with classifier-free guidance (SD3's default 7.0) every transformer pass runs
a batch of two ([uncond; cond]), so it is counted twice; the VAE decodes once. The text sequence is
77 CLIP tokens plus max_sequence_length T5 tokens (256 by default: 333 in all).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ralu_core.measurement.dit_profile import DiTFlopsProfile, Reuse
from ralu_core.measurement.flops import FlopCount
from ralu_core.measurement.text_encoders import CLIP_G, CLIP_L, T5_XXL, clip_text_flops, t5_encoder_flops
from ralu_core.pipelines.adapter import check_image_size
from ralu_core.pipelines.pipeline_call import read_component_configs
from ralu_core.sampling.tokens import TokenGrid
from ralu_sd3.attention import CachedKVJointProcessor, attention_modules
from ralu_sd3.flops import load_sd3_config, transformer_forward_flops, vae_decode_flops

CLIP_TOKENS = 77
Architecture = Literal["sd3-medium", "sd35-large"]
ARCHITECTURES: dict[str, tuple[Architecture, int, bool]] = {
    # name -> (configs, baseline steps: the pipeline default as in the paper, classifier-free guidance)
    "sd3-medium": ("sd3-medium", 28, True),
    "sd35-large": ("sd35-large", 28, True),
    # SD3.5-Large-Turbo: SD3.5-Large's architecture, distilled to 4 steps at guidance 0 (no CFG batch).
    "sd35-large-turbo": ("sd35-large", 4, False),
}


class SD3FlopsProfile(DiTFlopsProfile):
    """Counts SD3Transformer2DModel forwards and AutoencoderKL decodes on the meta device."""

    def __init__(
        self,
        name: str,
        transformer: dict[str, Any],
        vae: dict[str, Any],
        *,
        baseline_steps: int = 28,
        t5_tokens: int = 256,
        guidance: bool = True,
    ) -> None:
        self.name = name
        self.transformer = transformer
        self.vae = vae
        self.baseline_steps = baseline_steps
        self.text_tokens = CLIP_TOKENS + t5_tokens
        self.cfg_batch = 2 if guidance else 1
        self.vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
        self.patch = int(transformer.get("patch_size", 2))

    @classmethod
    def from_source(cls, source: str | Path) -> SD3FlopsProfile:
        """``sd3-medium``, ``sd35-large``, ``sd35-large-turbo`` or a diffusers StableDiffusion3Pipeline folder."""
        if str(source) in ARCHITECTURES:
            configs, steps, guidance = ARCHITECTURES[str(source)]
            return cls(
                str(source),
                load_sd3_config(configs, "transformer"),
                load_sd3_config(configs, "vae"),
                baseline_steps=steps,
                guidance=guidance,
            )
        transformer, vae = read_component_configs(source, ", ".join(ARCHITECTURES), "StableDiffusion3Pipeline")
        return cls(Path(source).name, transformer, vae)

    @classmethod
    def from_pipeline(cls, pipeline: Any, call_kwargs: dict[str, Any]) -> SD3FlopsProfile:
        return cls(
            type(pipeline).__name__,
            dict(pipeline.transformer.config),
            dict(pipeline.vae.config),
            t5_tokens=int(call_kwargs.get("max_sequence_length", 256)),
            guidance=float(call_kwargs.get("guidance_scale", 7.0)) > 1,
        )

    def grid(self, height: int, width: int) -> TokenGrid:
        unit = self.vae_factor * self.patch
        check_image_size(height, width, unit, f"for SD3 (VAE factor {self.vae_factor} x patch {self.patch})")
        return TokenGrid(
            rows=height // unit, cols=width // unit, channels=int(self.transformer["in_channels"]), patch=self.patch
        )

    def transformer_forward(self, image_tokens: int, reuse: Reuse | None) -> FlopCount:
        return transformer_forward_flops(
            self.transformer, image_tokens, self.text_tokens, batch=self.cfg_batch, reuse=reuse
        )

    def cached_attention(self) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
        return attention_modules, CachedKVJointProcessor

    def text_encoders(self) -> FlopCount:
        """CLIP-L and CLIP-G over 77 tokens, T5-XXL over the call's T5 tokens: one prompt's (a CFG call encodes
        the negative prompt too; the RALU paper's counts fit one)."""
        t5_tokens = self.text_tokens - CLIP_TOKENS
        return clip_text_flops(CLIP_L) + clip_text_flops(CLIP_G) + t5_encoder_flops(T5_XXL, t5_tokens)

    def without_guidance_batch(self) -> SD3FlopsProfile:
        single = copy.copy(self)
        single.cfg_batch = 1
        single.name = f"{self.name} (one pass per step)"
        return single

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        return vae_decode_flops(self.vae, latent_height, latent_width)
