"""FLOP counts of FLUX components, computed exactly on the meta device.

Why: RALU's savings come from running early steps on fewer image tokens; reporting them honestly needs
the cost of one transformer forward at any token count, and of the VAE decode, for the real FLUX.1-dev
architecture -- without its 24 GB of weights. The configs of FLUX.1-dev ship with this package
(``data/flux-dev/*.json``) and the models are instantiated on the meta device (no memory, no init), then
counted with :func:`ralu_core.measurement.flops.count_flops` (1 multiply-add = 2 FLOPs; matmuls, convolutions and
attention products only).

The text encoders (CLIP-L and T5-XXL) are excluded everywhere: they run once per prompt, not per
denoising step, and are identical for every acceleration strategy.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from importlib import resources
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from ralu_core.measurement.flops import FlopCount, cached_meta_module, count_flops
from ralu_core.measurement.flops import vae_decode_flops as core_vae_decode_flops

__all__ = ["load_flux_dev_config", "transformer_forward_flops", "vae_decode_flops"]

_META = torch.device("meta")


def load_flux_dev_config(part: Literal["transformer", "vae", "scheduler"]) -> dict[str, Any]:
    """The diffusers config of FLUX.1-dev's ``transformer``, ``vae`` or ``scheduler`` (a fresh, mutable copy)."""
    if part not in ("transformer", "vae", "scheduler"):
        raise ValueError(f"part must be 'transformer', 'vae' or 'scheduler', got {part!r}")
    resource = resources.files("ralu_flux").joinpath("data").joinpath("flux-dev").joinpath(f"{part}.json")
    text = resource.read_text("utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def transformer_forward_flops(
    config: dict[str, Any], image_tokens: int, text_tokens: int = 512, batch: int = 1, reuse: Any = None
) -> FlopCount:
    """FLOPs of one ``FluxTransformer2DModel`` forward (one denoising step, one CFG-free pass).

    ``image_tokens`` counts packed 2x2 latent patches, e.g. 4096 for a 1024x1024 image; ``text_tokens``
    is the T5 sequence length (``max_sequence_length``). Text encoders are not included. ``reuse(model)``,
    where given, installs a cache's hooks on the meta model for the count (a step that reuses blocks).
    """
    if image_tokens <= 0 or text_tokens < 0 or batch <= 0:
        raise ValueError("image_tokens and batch must be positive and text_tokens non-negative")
    model = cached_meta_module(FluxTransformer2DModel, config)
    cfg = model.config

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=_META)

    inputs: dict[str, Any] = {
        "hidden_states": empty(batch, image_tokens, cfg.in_channels),
        "encoder_hidden_states": empty(batch, text_tokens, cfg.joint_attention_dim),
        "pooled_projections": empty(batch, cfg.pooled_projection_dim),
        "timestep": empty(batch),
        "guidance": empty(batch) if cfg.guidance_embeds else None,
        "txt_ids": empty(text_tokens, 3),
        "img_ids": empty(image_tokens, 3),
        "return_dict": False,
    }
    with torch.no_grad(), nullcontext() if reuse is None else reuse(model):
        return count_flops(lambda: model(**inputs))


def vae_decode_flops(config: dict[str, Any], latent_height: int, latent_width: int, batch: int = 1) -> FlopCount:
    """FLOPs of ``AutoencoderKL.decode`` for latents of ``latent_height x latent_width`` (no tiling/slicing).

    For FLUX the image is 8x the latent size, e.g. a 128x128 latent decodes to 1024x1024 pixels.
    """
    return core_vae_decode_flops(AutoencoderKL, config, latent_height, latent_width, batch)
