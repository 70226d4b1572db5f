"""Offline, random-weight ``diffusers.LuminaPipeline`` instances for tests and demos.

Every component is built from an in-code config with deterministic random weights (``seed`` ->
bit-identical weights): a LuminaNextDiT2DModel with grouped-query attention, as Lumina-Next-SFT's (8 key/value
heads for 32 query heads there, 2 for 4 here), a Gemma text encoder of two layers (the pipeline reads the
second-to-last hidden state) with the offline Gemma tokenizer of :mod:`ralu_core.pipelines.offline`, an SDXL-style
4-channel VAE (scaling 0.13025, no shift) and the flow-matching Euler scheduler. Two initialisations differ
from the model's own: the per-head cross-attention gates start at zero in Lumina (tanh(0) = 0: the prompt
would reach the image only through the time-caption embedding), and ``pad_token`` is left uninitialised by
it (it is never read). ``sample_size`` 8 makes the default image 64 x 64 (a 4 x 4 patch grid); the
proportional attention's base length is then 16 tokens. Images made with random weights are noise-like:
for plumbing, shapes and determinism, never quality.
"""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.pipelines.offline import make_gemma_tokenizer, seeded_components, small_vae

__all__ = ["make_lumina_pipeline", "size_config"]

_TRANSFORMER = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 64,
    "num_layers": 3,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "multiple_of": 16,
    "learn_sigma": True,
    "qk_norm": True,
    "cross_attention_dim": 32,
}
_VAE_CHANNELS = (8, 8, 16, 16)


def size_config(component: str) -> dict[str, Any] | None:
    """The size-deciding config of the tiny pipeline's components, without building it."""
    if component == "transformer":
        return dict(_TRANSFORMER)
    if component == "vae":
        return {"block_out_channels": list(_VAE_CHANNELS), "latent_channels": 4}
    return None


def _transformer() -> Any:
    from diffusers import LuminaNextDiT2DModel

    model: Any = LuminaNextDiT2DModel(**_TRANSFORMER)
    with torch.no_grad():
        model.pad_token.normal_(std=0.02)
        for layer in model.layers:
            layer.gate.normal_(std=0.5)  # open the cross-attention gates: the prompt matters
    return model


def make_lumina_pipeline(seed: int = 0) -> Any:
    """A tiny LuminaPipeline with random weights, built offline (seconds on a CPU)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaPipeline
    from transformers import GemmaConfig, GemmaModel

    tokenizer = make_gemma_tokenizer()

    def text_encoder() -> Any:
        config = GemmaConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TRANSFORMER["cross_attention_dim"],
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return GemmaModel(config)

    modules = seeded_components(
        {
            "transformer": _transformer,
            "vae": lambda: small_vae(
                _VAE_CHANNELS, 4, scaling_factor=0.13025, shift_factor=None, sample_size=64, latent_channels=4
            ),
            "text_encoder": text_encoder,
        },
        seed=seed,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return LuminaPipeline(scheduler=scheduler, tokenizer=tokenizer, **modules)
