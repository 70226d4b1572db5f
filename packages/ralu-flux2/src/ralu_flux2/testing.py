"""Offline, random-weight ``diffusers.Flux2Pipeline`` instances for tests and demos.

Why this exists: ralu's FLUX.2 adapter must be exercised end to end (the chat-template prompt encoding that stacks
three hidden layers of the text encoder, the unmasked 512-token text stream with its 4-D (T, H, W, L) position ids,
the guidance embedding, the empirical-mu flow-matching schedule, 2 x 2 patchified 32-channel latents and the VAE's
batch-norm un-normalisation) where no weights or tokenizer files can be downloaded. Every component is therefore
built here from an in-code config with deterministic random weights (``seed`` -> bit-identical weights), in the
very classes FLUX.2-dev uses:

* a Flux2Transformer2DModel of 1 double-stream and 2 single-stream blocks, 2 heads x 16 dims (RoPE axes
  4 + 4 + 4 + 4 over T, H, W, L), reading 32-channel latents patchified 2 x 2 (128 channels in and out, as the
  real model), with the guidance embedding, and 96-wide text (3 stacked layers x 32);
* a Mistral3ForConditionalGeneration text encoder of 31 layers, 32 wide, 2 query heads and 1 key/value head of
  16 dims (Mistral Small 3.1: 40 layers, 5120 wide): the pipeline stacks ``hidden_states[10]``, ``[20]`` and
  ``[30]`` by default (``text_encoder_out_layers``), so the default call works unchanged; a 1-layer Pixtral vision
  tower (16 wide, patch 14) that text-only prompts never reach but the class builds;
* the offline Tekken-style tokenizer of :mod:`ralu_core.pipelines.offline` with Mistral's control tokens and chat
  template (the real checkpoint wraps its tokenizer in a ``PixtralProcessor``, which transformers builds only with
  torchvision; the prompt encoding needs no more than the tokenizer's ``apply_chat_template``). The system message
  spans 31 tokens, so a prompt keeps its own tokens within the pipeline's 512 (padded on the left);
* an AutoencoderKLFlux2 of four levels 8-16 channels wide (factor 8, as the pipeline computes it from the levels),
  32 latent channels, one residual block per level, with non-trivial batch-norm statistics (running means ~ N(0,
  0.25), variances in [0.5, 2)) so that un-normalising latents before decoding is exercised;
* the scheduler with FLUX.2-dev's own config (dynamic exponential shift; the pipeline passes its own sigmas and an
  empirical ``mu``).

Two initialisations differ from PyTorch's defaults. The transformer's modulation has no bias, and its residual
gates come out near 0.04; and the text stream holds ~470 identical padding tokens (zero hidden states: the pad
row of the embedding starts at zero) that the transformer attends to unmasked, so a prompt moved the latents by
0.05 %. The gate rows of the three modulation projections are drawn with std 1 (gates near 0.4) and the QK-norm
scales set to 3 (sharper attention, as trained QK-norm scales grow), which makes that about 5 %. Images made with
random weights are noise-like: for plumbing, shapes and determinism, never quality.
"""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.pipelines.offline import make_mistral_tokenizer, seeded_components

__all__ = ["make_flux2_pipeline", "size_config"]

_TEXT_WIDTH = 32
_TEXT_LAYERS = 31  # Flux2Pipeline stacks hidden_states[10], [20] and [30] by default (text_encoder_out_layers)
_GATE_STD = 1.0
_QK_NORM_SCALE = 3.0
_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,  # 32 latent channels x 2 x 2 patchification, as in FLUX.2
    "out_channels": None,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 3 * _TEXT_WIDTH,  # three stacked hidden states of the text encoder
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": [4, 4, 4, 4],  # (T, H, W, L): even, summing to the head width
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": True,
}
_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],  # four levels: the pipeline's VAE factor is 2 ** (4 - 1) = 8
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 32,
    "norm_num_groups": 4,
    "sample_size": 1024,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": [2, 2],
}
_MID: dict[str, dict[str, Any]] = {
    # CPU benchmarks where the transformer dominates: 2 double + 8 single blocks (FLUX.2-dev's 1 : 6 ratio, about),
    # 4 heads x 64; at 512 x 512 with 128 text tokens, the 8 : 1 image-to-text ratio of FLUX.2-dev at 1024 x 1024.
    "transformer": {
        "num_layers": 2,
        "num_single_layers": 8,
        "attention_head_dim": 64,
        "num_attention_heads": 4,
        "axes_dims_rope": [16, 16, 16, 16],
    },
    "vae": {"block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8},
}
SIZES = ("tiny", "mid")
_SCHEDULER: dict[str, Any] = {  # FLUX.2-dev's scheduler_config.json (data/flux2-dev/scheduler.json)
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
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
    from diffusers import Flux2Transformer2DModel

    model: Any = Flux2Transformer2DModel(**_config(size, "transformer"))  # type: ignore[no-untyped-call]
    width = model.inner_dim
    with torch.no_grad():
        # (shift, scale, gate) per sub-block: x 2 in the double-stream blocks, x 1 in the single-stream ones.
        for modulation in (model.double_stream_modulation_img, model.double_stream_modulation_txt):
            modulation.linear.weight[2 * width : 3 * width].normal_(std=_GATE_STD)  # open the gates
            modulation.linear.weight[5 * width : 6 * width].normal_(std=_GATE_STD)
        model.single_stream_modulation.linear.weight[2 * width : 3 * width].normal_(std=_GATE_STD)
        for module in model.modules():
            if isinstance(module, torch.nn.RMSNorm):  # the QK norms, the transformer's only RMSNorms
                module.weight.fill_(_QK_NORM_SCALE)
    return model


def _vae(size: str) -> Any:
    from diffusers import AutoencoderKLFlux2

    model: Any = AutoencoderKLFlux2(**_config(size, "vae"))  # type: ignore[no-untyped-call]
    with torch.no_grad():  # the latent statistics the pipeline un-normalises with, drawn from the seed
        model.bn.running_mean.normal_(std=0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": _TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": _TEXT_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000000.0},
            "sliding_window": None,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 8,
            "image_size": 1540,
            "patch_size": 14,
            "hidden_act": "silu",
        },
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
        projector_hidden_act="gelu",
        multimodal_projector_bias=False,
        vision_feature_layer=-1,
    )
    return Mistral3ForConditionalGeneration(config)


def make_flux2_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32, size: str = "tiny") -> Any:
    """A tiny (or, `size` ``"mid"``, a mid-size) Flux2Pipeline with random weights, built offline (well under a
    second on a CPU, once imported).

    The same ``seed`` gives bit-identical weights (each component from its own seed derived from ``seed``; the
    caller's global RNG state is left untouched); weights are initialised in float32, then cast to ``dtype``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    tokenizer = make_mistral_tokenizer()
    modules = seeded_components(
        {
            "transformer": lambda: _transformer(size),
            "vae": lambda: _vae(size),
            "text_encoder": lambda: _text_encoder(tokenizer),
        },
        seed=seed,
        dtype=dtype,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**_SCHEDULER)  # type: ignore[no-untyped-call]
    return Flux2Pipeline(scheduler=scheduler, tokenizer=tokenizer, **modules)  # type: ignore[no-untyped-call]
