"""FLOPs of the text encoders of diffusers' DiT pipelines (CLIP text models, T5 encoders), counted on the meta
device from their configs. ralu's counts leave them out (they run once per prompt, whatever the recipe); the
RALU paper's counts include them, so `ralu flops --text-encoders include` adds them to quote its convention."""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.measurement.flops import FlopCount, cached_meta_module, count_flops

CLIP_L: dict[str, Any] = {
    # openai/clip-vit-large-patch14's text model (FLUX's and SD3's first text encoder)
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_G: dict[str, Any] = {
    # OpenCLIP ViT-bigG/14's text model (SD3's second text encoder)
    **CLIP_L,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
T5_XXL: dict[str, Any] = {
    # google/t5-v1_1-xxl's encoder (FLUX's and SD3's T5)
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
}


def _clip_text(**config: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(**config))


def _t5_encoder(**config: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**config))


def clip_text_flops(config: dict[str, Any], tokens: int = 77) -> FlopCount:
    """One CLIP text model pass over `tokens` tokens (batch 1)."""
    model = cached_meta_module(_clip_text, config)
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    with torch.no_grad():
        return count_flops(lambda: model(input_ids=ids))


def t5_encoder_flops(config: dict[str, Any], tokens: int) -> FlopCount:
    """One T5 encoder pass over `tokens` tokens (batch 1)."""
    model = cached_meta_module(_t5_encoder, config)
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    with torch.no_grad():
        return count_flops(lambda: model(input_ids=ids))
