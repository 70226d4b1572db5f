"""Offline, random-weight ``diffusers.QwenImagePipeline`` instances for tests and demos.

Why this exists: ralu's Qwen-Image adapter must be exercised end to end (the chat-template prompt encoding and its
34-token drop, unpadded per-prompt text lengths and their masks, 2 x 2 packing, the dynamic-shift flow-matching
scheduler with its terminal shift, the VAE's latent un-normalisation) where no weights or tokenizer files can be
downloaded. Every component is therefore built here from an in-code config with deterministic random weights
(``seed`` -> bit-identical weights), in the very classes Qwen-Image uses:

* a QwenImageTransformer2DModel of 3 blocks, 2 heads x 16 dims (RoPE axes 4 + 6 + 6), reading 16-channel latents
  packed 2 x 2 (64 channels in, 16 out, as the real model) and 32-wide text;
* a Qwen2.5-VL text encoder of 2 layers, 32 wide, 2 query heads and 1 key/value head of 16 dims (multimodal RoPE
  sections 2 + 3 + 3, Qwen2.5-VL-7B's 16 + 24 + 24 scaled down), with a 1-block vision tower that text-only
  prompts never reach but the class builds; the pipeline reads its last hidden state;
* the offline byte-level ``Qwen2Tokenizer`` of :mod:`ralu_core.pipelines.offline`, under which the chat template's
  system part is exactly the 34 tokens the pipeline drops, as with the real tokenizer;
* an AutoencoderKLQwenImage 8 channels wide at full resolution (Qwen-Image's 96 / 12, same multipliers, one
  residual block per level): factor 8 (3 downsamplings), 16 latent channels with Qwen-Image's per-channel latent
  mean and std (the class defaults), so decoding un-normalises with non-trivial statistics;
* the scheduler with Qwen-Image's own config (exponential time shift, ``max_image_seq_len`` 8192, terminal 0.02).

One initialisation differs from the model's own: no parameter starts at zero (bar the text encoder's biases), but
with PyTorch's default Linear init the blocks' residual gates (the third and sixth slices of ``img_mod`` and
``txt_mod``) come out near 0.1, and a prompt then moves the latents by about 3 %; their biases are drawn with
std 0.5 instead (as the Lumina pipeline's gates), which makes that about 15 %. Images made with random weights
are noise-like: for plumbing, shapes and determinism, never quality.
"""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.pipelines.offline import make_qwen2_tokenizer, seeded_components

__all__ = ["make_qwenimage_pipeline", "size_config"]

_TEXT_WIDTH = 32
_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,  # 16 latent channels x 2 x 2 packing, as in Qwen-Image
    "out_channels": 16,
    "num_layers": 3,  # a head, a middle and a tail for the block caches (DeepCache)
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _TEXT_WIDTH,
    "guidance_embeds": False,
    "axes_dims_rope": [4, 6, 6],  # even, summing to the head width
}
_VAE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],  # the pipeline's VAE factor is 2 ** len(...) = 8
    "dropout": 0.0,
}
_MID: dict[str, dict[str, Any]] = {
    # CPU benchmarks where the transformer dominates: 6 blocks, 4 heads x 64 (RoPE axes 8 + 28 + 28, Qwen-Image's
    # proportions), 128-wide text; at 512 x 512 its 1024 image tokens take most of the time, as at full size.
    "transformer": {
        "num_layers": 6,
        "attention_head_dim": 64,
        "num_attention_heads": 4,
        "joint_attention_dim": 128,
        "axes_dims_rope": [8, 28, 28],
    },
    "vae": {"base_dim": 16},
    "text": {"hidden_size": 128, "intermediate_size": 256, "head_dim": 64, "mrope_section": [8, 12, 12]},
}
SIZES = ("tiny", "mid")
_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


def _config(size: str, component: str) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    base = {"transformer": _TRANSFORMER, "vae": _VAE}[component]
    merged = {**base, **(_MID[component] if size == "mid" else {})}
    return {key: list(value) if isinstance(value, list) else value for key, value in merged.items()}


def size_config(component: str, size: str = "tiny") -> dict[str, Any] | None:
    """The size-deciding config of the tiny (or mid-size) pipeline's components, without building it."""
    return _config(size, component) if component in ("transformer", "vae") else None


def _transformer(size: str) -> Any:
    from diffusers import QwenImageTransformer2DModel

    model: Any = QwenImageTransformer2DModel(**_config(size, "transformer"))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        for block in model.transformer_blocks:
            width = block.dim
            for modulation in (block.img_mod[1], block.txt_mod[1]):  # (shift, scale, gate) x (attention, MLP)
                modulation.bias[2 * width : 3 * width].normal_(std=0.5)  # open the gates: the prompt matters
                modulation.bias[5 * width : 6 * width].normal_(std=0.5)
    return model


def _text_encoder(tokenizer: Any, size: str) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tiny = {"hidden_size": _TEXT_WIDTH, "intermediate_size": 64, "head_dim": 16, "mrope_section": [2, 3, 3]}
    width = dict(_MID["text"] if size == "mid" else tiny)
    sections = width.pop("mrope_section")  # Qwen2.5-VL-7B's 16 + 24 + 24, scaled to half the head width
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            **width,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,  # the pipeline truncates at 1024 + 34 tokens
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": sections},
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": width["hidden_size"],
            "fullatt_block_indexes": [0],
        },
        # The vision token ids keep Qwen2.5-VL's values, beyond this vocabulary: no text prompt can contain them.
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def make_qwenimage_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32, size: str = "tiny") -> Any:
    """A tiny (or, `size` ``"mid"``, a mid-size) QwenImagePipeline with random weights, built offline (about a
    second on a CPU).

    The same ``seed`` gives bit-identical weights (each component from its own seed derived from ``seed``; the
    caller's global RNG state is left untouched); weights are initialised in float32, then cast to ``dtype``.
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    tokenizer = make_qwen2_tokenizer()
    modules = seeded_components(
        {
            "transformer": lambda: _transformer(size),
            "vae": lambda: AutoencoderKLQwenImage(**_config(size, "vae")),  # type: ignore[no-untyped-call]
            "text_encoder": lambda: _text_encoder(tokenizer, size),
        },
        seed=seed,
        dtype=dtype,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**_SCHEDULER)  # type: ignore[no-untyped-call]
    return QwenImagePipeline(scheduler=scheduler, tokenizer=tokenizer, **modules)  # type: ignore[no-untyped-call]
