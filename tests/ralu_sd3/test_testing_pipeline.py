"""The offline random-weight StableDiffusion3Pipeline: determinism, CFG, variants, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from PIL import Image

from ralu_sd3.testing import make_sd3_pipeline

FAST: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "max_sequence_length": 16}
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")

# Fixtures ``sd3`` and ``sd35`` (the tiny variants, seed 0, progress bar off) come from conftest.py.


def _generate(pipeline: StableDiffusion3Pipeline, prompt: str | list[str], **kwargs: Any) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(prompt, generator=generator, output_type="np", **{**FAST, **kwargs}).images


def _weights(pipeline: StableDiffusion3Pipeline) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value for name in COMPONENTS for key, value in getattr(pipeline, name).state_dict().items()
    }


def _transformer_batches(pipeline: StableDiffusion3Pipeline, **kwargs: Any) -> list[int]:
    """Batch sizes the transformer sees during one generation."""
    batches: list[int] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        batches.append(int(kw["hidden_states"].shape[0]))

    handle = pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _generate(pipeline, "a cat", **kwargs)
    finally:
        handle.remove()
    return batches


def test_same_seed_same_weights_and_global_rng_untouched(sd3: StableDiffusion3Pipeline) -> None:
    rng_before = torch.get_rng_state()
    again = make_sd3_pipeline("sd3-tiny", seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    ours, theirs = _weights(sd3), _weights(again)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = _weights(make_sd3_pipeline("sd3-tiny", seed=1))
    assert not torch.equal(ours["transformer.pos_embed.proj.weight"], other["transformer.pos_embed.proj.weight"])
    # The two CLIP towers are distinct models, not copies.
    assert sd3.text_encoder.config.hidden_size != sd3.text_encoder_2.config.hidden_size


def test_sd3_medium_like_structure(sd3: StableDiffusion3Pipeline) -> None:
    tcfg = sd3.transformer.config
    assert sd3.vae_scale_factor == 8 and sd3.patch_size == 2 and tcfg.in_channels == 16
    assert (sd3.vae.config.scaling_factor, sd3.vae.config.shift_factor) == (1.5305, 0.0609)
    assert not sd3.vae.config.use_quant_conv and not sd3.vae.config.use_post_quant_conv
    assert sd3.scheduler.config.shift == 3.0 and not sd3.scheduler.config.use_dynamic_shifting
    assert tcfg.qk_norm is None and tuple(tcfg.dual_attention_layers) == ()
    assert tcfg.caption_projection_dim == sd3.transformer.inner_dim
    assert tcfg.joint_attention_dim == sd3.text_encoder_3.config.d_model
    # CLIP hidden states are concatenated and zero-padded to the T5 width; pooled outputs concatenated.
    clips = (sd3.text_encoder.config, sd3.text_encoder_2.config)
    assert sum(c.hidden_size for c in clips) < tcfg.joint_attention_dim
    assert sum(c.projection_dim for c in clips) == tcfg.pooled_projection_dim
    # Default 64x64 images (4x4 patches) are a centred crop of the 16x16 position grid.
    assert sd3.default_sample_size * sd3.vae_scale_factor == 64
    assert tcfg.pos_embed_max_size == 16 and sd3.tokenizer_max_length == 77


def test_crop_of_position_grid(sd3: StableDiffusion3Pipeline) -> None:
    patch_embed = sd3.transformer.pos_embed
    full = patch_embed.pos_embed.reshape(16, 16, -1)
    crop = patch_embed.cropped_pos_embed(64 // 8, 96 // 8).reshape(4, 6, -1)  # a 64x96 image: 4x6 patches
    assert torch.equal(crop, full[6:10, 5:11])  # top = (16 - 4) // 2, left = (16 - 6) // 2


def test_generates_with_and_without_cfg(sd3: StableDiffusion3Pipeline) -> None:
    image = sd3("a photo of a cat", generator=torch.Generator().manual_seed(0), **FAST).images[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    guided = _generate(sd3, "a photo of a cat")  # guidance_scale 7.0 by default
    assert guided.shape == (1, 64, 64, 3) and np.isfinite(guided).all()
    assert np.array_equal(guided, _generate(sd3, "a photo of a cat"))  # generator-seeded => reproducible
    unguided = _generate(sd3, "a photo of a cat", guidance_scale=1.0)
    negative = _generate(sd3, "a photo of a cat", negative_prompt="blurry dark")
    assert np.isfinite(unguided).all() and np.isfinite(negative).all()
    assert not np.array_equal(guided, unguided) and not np.array_equal(guided, negative)
    assert _transformer_batches(sd3) == [2, 2]  # CFG stacks unconditional and conditional inputs
    assert _transformer_batches(sd3, guidance_scale=1.0) == [1, 1]


def test_non_square_and_larger_sizes(sd3: StableDiffusion3Pipeline) -> None:
    assert _generate(sd3, "a dog", height=64, width=96).shape == (1, 64, 96, 3)
    assert _generate(sd3, ["a red house", "a cat"], height=128, width=128).shape == (2, 128, 128, 3)


def test_default_and_short_max_sequence_length(sd3: StableDiffusion3Pipeline) -> None:
    embeds, negative, pooled, negative_pooled = sd3.encode_prompt("a cat", None, None)
    joint, pooled_dim = sd3.transformer.config.joint_attention_dim, sd3.transformer.config.pooled_projection_dim
    assert embeds.shape == negative.shape == (1, 77 + 256, joint)  # 77 CLIP + 256 T5 tokens by default
    assert pooled.shape == negative_pooled.shape == (1, pooled_dim)
    short, *_ = sd3.encode_prompt("a cat", None, None, max_sequence_length=16)
    assert short.shape == (1, 77 + 16, joint)
    clip_width = sd3.text_encoder.config.hidden_size + sd3.text_encoder_2.config.hidden_size
    assert torch.all(short[:, :77, clip_width:] == 0)  # CLIP part zero-padded to the T5 width
    assert _generate(sd3, "a cat", max_sequence_length=256, num_inference_steps=1).shape == (1, 64, 64, 3)


def test_sd35_variant_generates(sd35: StableDiffusion3Pipeline) -> None:
    pipe = sd35
    assert pipe.transformer.config.qk_norm == "rms_norm"
    first, last = pipe.transformer.transformer_blocks[0], pipe.transformer.transformer_blocks[-1]
    assert first.attn2 is not None and last.attn2 is None and first.attn.norm_q is not None
    images = _generate(pipe, "a photo of a cat")
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert _generate(pipe, "a dog", height=64, width=96, guidance_scale=1.0).shape == (1, 64, 96, 3)


def test_save_and_load_round_trip_offline(
    sd3: StableDiffusion3Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    sd3.save_pretrained(tmp_path)
    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    prompts = ["a photo of a cat", "an unknown zxqv"]
    assert np.array_equal(_generate(sd3, prompts), _generate(loaded, prompts))
    assert loaded.tokenizer_3("a photo of a cat").input_ids == sd3.tokenizer_3("a photo of a cat").input_ids


def test_mid_and_dtype_variants() -> None:
    mid = make_sd3_pipeline("sd3-mid")
    assert mid.transformer.config.num_layers == 8 and mid.transformer.inner_dim == 256
    assert mid.vae_scale_factor == 8 and mid.default_sample_size * mid.vae_scale_factor == 512
    assert mid.transformer.config.pos_embed_max_size >= 512 // 16
    bf16 = make_sd3_pipeline("sd3-tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.transformer.parameters()} == {torch.bfloat16}
    assert bf16.text_encoder_3.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        make_sd3_pipeline("sd3-huge")  # type: ignore[arg-type]
