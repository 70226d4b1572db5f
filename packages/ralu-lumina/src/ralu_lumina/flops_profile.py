"""FLOPs of Lumina-Next architectures on the meta device: Lumina-Next-SFT's configs (shipped here), or a local
LuminaPipeline folder. The Gemma text encoder is excluded (it runs once per prompt, as for every adapter)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ralu_core.measurement.dit_profile import DiTFlopsProfile, Reuse
from ralu_core.measurement.flops import FlopCount, cached_meta_module, count_flops
from ralu_core.measurement.flops import vae_decode_flops as core_vae_decode_flops
from ralu_core.pipelines.adapter import check_image_size
from ralu_core.pipelines.pipeline_call import read_component_configs
from ralu_core.sampling.tokens import TokenGrid
from ralu_lumina.adapter import PATCH, ROPE_GRID, describe_lumina_blocks, strip_rope
from ralu_lumina.attention import CachedKVLuminaProcessor, attention_modules

TEXT_TOKENS = 128
"""Gemma tokens counted per prompt: LuminaPipeline pads to the longest prompt (at most 256); 128 covers long
captions. Text enters by cross-attention only, so the count barely moves the total."""


def load_lumina_config(part: str) -> dict[str, Any]:
    """Lumina-Next-SFT's ``transformer``, ``vae`` or ``scheduler`` config (a fresh copy)."""
    resource = resources.files("ralu_lumina").joinpath("data", "lumina-next-sft", f"{part}.json")
    config: dict[str, Any] = json.loads(resource.read_text("utf-8"))
    return config


class LuminaFlopsProfile(DiTFlopsProfile):
    """Counts LuminaNextDiT2DModel forwards (one batch row: CFG doubles every count alike) and AutoencoderKL
    decodes on the meta device."""

    def __init__(self, name: str, transformer: dict[str, Any], vae: dict[str, Any], baseline_steps: int = 30) -> None:
        self.name, self.transformer, self.vae = name, transformer, vae
        self.baseline_steps = baseline_steps
        self.text_tokens = TEXT_TOKENS

    @classmethod
    def from_source(cls, source: str | Path) -> LuminaFlopsProfile:
        """``lumina-next-sft`` (30 steps, the pipeline's default and the RAS paper's) or a LuminaPipeline folder."""
        if str(source) == "lumina-next-sft":
            return cls("lumina-next-sft", load_lumina_config("transformer"), load_lumina_config("vae"))
        transformer, vae = read_component_configs(source, "lumina-next-sft", "LuminaPipeline")
        return cls(Path(source).name, transformer, vae)

    def grid(self, height: int, width: int) -> TokenGrid:
        check_image_size(height, width, 8 * PATCH, "for Lumina-Next (VAE factor 8 x patch 2)")
        return TokenGrid(rows=height // 16, cols=width // 16, channels=self.transformer["in_channels"], patch=PATCH)

    def cached_attention(self) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
        return attention_modules, CachedKVLuminaProcessor

    def transformer_forward(self, image_tokens: int, reuse: Reuse | None) -> FlopCount:
        from diffusers import LuminaNextDiT2DModel

        describe_lumina_blocks()  # for the hooks of caches that reuse blocks
        model = cached_meta_module(LuminaNextDiT2DModel, self.transformer)
        meta = torch.device("meta")
        head_dim = model.head_dim
        channels = model.config.in_channels
        inputs = {
            "hidden_states": torch.empty(1, channels, PATCH, image_tokens * PATCH, device=meta),
            "timestep": torch.empty(1, device=meta),
            "encoder_hidden_states": torch.empty(1, self.text_tokens, model.config.cross_attention_dim, device=meta),
            "encoder_mask": torch.ones(1, self.text_tokens, dtype=torch.long, device=meta),
            "image_rotary_emb": torch.empty(ROPE_GRID, ROPE_GRID, head_dim // 2, dtype=torch.complex64, device=meta),
            "cross_attention_kwargs": {"base_sequence_length": 4096},
            "return_dict": False,
        }
        rope = torch.empty(1, image_tokens, head_dim // 2, dtype=torch.complex64, device=meta)
        with torch.no_grad(), ExitStack() as stack:
            stack.enter_context(strip_rope(model, rope))
            stack.enter_context(nullcontext() if reuse is None else reuse(model))
            return count_flops(lambda: model(**inputs))

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        from diffusers import AutoencoderKL

        return core_vae_decode_flops(AutoencoderKL, self.vae, latent_height, latent_width)
