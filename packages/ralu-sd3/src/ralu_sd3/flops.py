"""FLOP counts of SD3 / SD3.5 components, computed exactly on the meta device.

Why: RALU's savings come from running early steps on fewer image tokens; reporting them honestly needs
the cost of one transformer forward at any token count, and of the VAE decode, for the real SD3-medium
and SD3.5-large architectures -- without their weights. Their diffusers configs ship with this package
(``data/<arch>/{transformer,vae}.json``); the models are instantiated on the meta device (no memory, no
init) and counted with :func:`ralu_core.measurement.flops.count_flops` (1 multiply-add = 2 FLOPs; matmuls,
convolutions and attention products only).

Token path, not dense image: ralu evaluates SD3 on arbitrary token sets (mixed resolutions), so a
forward is counted as :mod:`ralu_sd3.forward` runs it -- the patch projection of each token (the
``PatchEmbed`` conv on one p x p patch per token), the time/pooled-text embedder, the context embedder,
every joint block on (``image_tokens``, ``text_tokens``), ``norm_out`` and ``proj_out``. This equals the
model's own dense forward whenever the tokens form a grid (the position-embedding crop and the add are
not FLOPs), but also works for counts that no grid within ``pos_embed_max_size`` can hold.

Text length: ``StableDiffusion3Pipeline.encode_prompt`` concatenates the 77 CLIP tokens (CLIP-L and
bigG hidden states side by side, zero-padded to the T5 width) with ``max_sequence_length`` T5 tokens,
whose pipeline default is 256: 77 + 256 = 333 text tokens per forward.

Classifier-free guidance: the pipeline stacks the unconditional and conditional inputs and runs every
denoising step at batch 2 x images. All counts here are per batch-``batch`` forward (default one
image, one branch); callers multiply by 2 for CFG.

The text encoders (CLIP-L, CLIP-bigG, T5-XXL) are excluded everywhere: they run once per prompt, not
per denoising step, and are identical for every acceleration strategy.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from importlib import resources
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel

from ralu_core.measurement.flops import FlopCount, cached_meta_module, count_flops
from ralu_core.measurement.flops import vae_decode_flops as core_vae_decode_flops

__all__ = ["DEFAULT_TEXT_TOKENS", "load_sd3_config", "transformer_forward_flops", "vae_decode_flops"]

#: 77 CLIP tokens + the pipeline's default ``max_sequence_length`` of 256 T5 tokens.
DEFAULT_TEXT_TOKENS = 77 + 256

_META = torch.device("meta")
_ARCHS = ("sd3-medium", "sd35-large")
_PARTS = ("transformer", "vae", "scheduler")


def load_sd3_config(
    arch: Literal["sd3-medium", "sd35-large"], part: Literal["transformer", "vae", "scheduler"]
) -> dict[str, Any]:
    """The diffusers config of SD3-medium's or SD3.5-large's ``transformer``, ``vae`` or ``scheduler``
    (a fresh copy)."""
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {_ARCHS}, got {arch!r}")
    if part not in _PARTS:
        raise ValueError(f"part must be one of {_PARTS}, got {part!r}")
    resource = resources.files("ralu_sd3").joinpath("data").joinpath(arch).joinpath(f"{part}.json")
    config: dict[str, Any] = json.loads(resource.read_text("utf-8"))
    return config


def _token_path_forward(model: Any, image_tokens: int, text_tokens: int, batch: int) -> None:
    """Run the modules of one forward on meta tensors, in the order the token path runs them."""
    cfg = model.config
    patch = int(cfg.patch_size)
    # One p x p patch per token, laid side by side: the conv sees exactly ``image_tokens`` patches.
    latent = torch.empty(batch, cfg.in_channels, patch, patch * image_tokens, device=_META)
    hidden = model.pos_embed.proj(latent).flatten(2).transpose(1, 2)  # (B, N, D)
    temb = model.time_text_embed(
        torch.empty(batch, device=_META), torch.empty(batch, cfg.pooled_projection_dim, device=_META)
    )
    context = model.context_embedder(torch.empty(batch, text_tokens, cfg.joint_attention_dim, device=_META))
    for block in model.transformer_blocks:
        context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
    model.proj_out(model.norm_out(hidden, temb))


def transformer_forward_flops(
    config: dict[str, Any],
    image_tokens: int,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    batch: int = 1,
    reuse: Any = None,
) -> FlopCount:
    """FLOPs of one ``SD3Transformer2DModel`` forward over ``image_tokens`` + ``text_tokens`` tokens.

    ``image_tokens`` counts 2x2 latent patches (4096 for 1024x1024 pixels); ``text_tokens`` defaults to
    the pipeline's 333 (77 CLIP + 256 T5). ``batch`` is the transformer batch: the pipeline runs CFG at
    batch 2 per image, so multiply a batch-1 count by 2 for a guided step. Text encoders are excluded.
    ``reuse(model)``, where given, installs a cache's hooks on the meta model for the count.
    """
    if image_tokens <= 0 or text_tokens < 0 or batch <= 0:
        raise ValueError("image_tokens and batch must be positive and text_tokens non-negative")
    model = cached_meta_module(SD3Transformer2DModel, config)
    with torch.no_grad(), nullcontext() if reuse is None else reuse(model):
        return count_flops(lambda: _token_path_forward(model, image_tokens, text_tokens, batch))


def vae_decode_flops(config: dict[str, Any], latent_height: int, latent_width: int, batch: int = 1) -> FlopCount:
    """FLOPs of ``AutoencoderKL.decode`` for latents of ``latent_height x latent_width`` (no tiling/slicing).

    The image is 8x the latent size, e.g. a 128x128 latent decodes to 1024x1024 pixels. The decode runs
    once per image after denoising (CFG does not double it).
    """
    return core_vae_decode_flops(AutoencoderKL, config, latent_height, latent_width, batch)
