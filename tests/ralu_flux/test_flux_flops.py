"""FLUX FLOP counts on the meta device against an analytic count derived from the architecture."""

from __future__ import annotations

from typing import Any

import pytest
from diffusers import AutoencoderKL, FluxTransformer2DModel

from ralu_core.measurement.flops import FlopCount, meta_module
from ralu_flux.flops import load_flux_dev_config, transformer_forward_flops, vae_decode_flops


def analytic_transformer_flops(cfg: dict[str, Any], n_img: int, n_txt: int, batch: int = 1) -> FlopCount:
    """Hand count of FluxTransformer2DModel's matmuls (2 FLOPs per multiply-add).

    Per token row r of a Linear(in, out): 2*in*out. With D = heads*head_dim, S = n_img + n_txt:
    * embedders: x_embedder (C->D) on image rows, context_embedder (J->D) on text rows; on the
      per-sample conditioning vector: timestep and guidance MLPs (256->D->D), pooled text (P->D->D);
    * double block: adaLN-Zero for both streams (2 x D->6D); q,k,v + output projection per stream
      (4 x D->D on all S rows); MLP D->4D->D per stream (S rows)        => 24*S*D^2 + 24*D^2;
    * single block: adaLN (D->3D); q,k,v (3 x D->D); MLP in (D->4D); fused out (5D->D)
                                                                            => 24*S*D^2 + 6*D^2;
    * final: AdaLayerNormContinuous (D->2D) and proj_out (D -> p^2 * out_channels) on image rows;
    * attention: every block attends jointly over S tokens: 4*S^2*D per block.
    """
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    s = n_img + n_txt
    c_in, p = cfg["in_channels"], cfg["patch_size"]
    c_out = cfg.get("out_channels") or c_in
    mlp = 2 * (256 * d + d * d)
    embed = 2 * n_img * c_in * d + 2 * n_txt * cfg["joint_attention_dim"] * d
    embed += mlp * (2 if cfg["guidance_embeds"] else 1) + 2 * (cfg["pooled_projection_dim"] * d + d * d)
    double = cfg["num_layers"] * (24 * s * d * d + 24 * d * d)
    single = cfg["num_single_layers"] * (24 * s * d * d + 6 * d * d)
    final = 2 * d * 2 * d + 2 * n_img * d * p * p * c_out
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    return FlopCount(
        linear=batch * (embed + double + single + final),
        attention=batch * blocks * 4 * s * s * d,
    )


def test_configs_build_on_meta() -> None:
    transformer = meta_module(FluxTransformer2DModel, load_flux_dev_config("transformer"))
    vae = meta_module(AutoencoderKL, load_flux_dev_config("vae"))
    n_params = sum(p.numel() for p in transformer.parameters())
    assert n_params == pytest.approx(11.9e9, rel=0.01)  # FLUX.1-dev: ~12B parameters
    assert transformer.config.num_layers == 19 and transformer.config.num_single_layers == 38
    assert vae.config.latent_channels == 16 and vae.config.shift_factor == pytest.approx(0.1159)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    with pytest.raises(ValueError):
        load_flux_dev_config("unet")  # type: ignore[arg-type]


def test_flux_dev_forward_matches_analytic_count() -> None:
    cfg = load_flux_dev_config("transformer")
    counted = transformer_forward_flops(cfg, image_tokens=4096, text_tokens=512)
    assert counted == analytic_transformer_flops(cfg, 4096, 512)
    print(
        f"FLUX.1-dev forward @4096+512 tokens: linear {counted.linear / 1e12:.2f} TFLOPs, "
        f"attention {counted.attention / 1e12:.2f} TFLOPs, total {counted.tflops():.2f} TFLOPs"
    )
    assert counted.tflops() == pytest.approx(74.38, abs=0.01)


def test_flux_dev_at_512_px_matches_analytic_count() -> None:
    cfg = load_flux_dev_config("transformer")
    assert transformer_forward_flops(cfg, image_tokens=1024, text_tokens=512) == analytic_transformer_flops(
        cfg, 1024, 512
    )


@pytest.mark.parametrize("guidance", [True, False])
def test_small_configs_match_analytic_count_and_batch_scales(guidance: bool) -> None:
    cfg = {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 2,
        "num_single_layers": 3,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 24,
        "pooled_projection_dim": 12,
        "guidance_embeds": guidance,
        "axes_dims_rope": (4, 6, 6),
    }
    one = transformer_forward_flops(cfg, 37, 11)
    assert one == analytic_transformer_flops(cfg, 37, 11)
    assert transformer_forward_flops(cfg, 37, 11, batch=3) == 3 * one == analytic_transformer_flops(cfg, 37, 11, 3)


def test_vae_decode_is_plausible() -> None:
    cfg = load_flux_dev_config("vae")
    big = vae_decode_flops(cfg, 128, 128)
    small = vae_decode_flops(cfg, 64, 64)
    print(f"VAE decode 128x128 latent: {big}, {big.tflops():.2f} TFLOPs; 64x64: {small.tflops():.3f} TFLOPs")
    assert 5e12 < big.linear < 20e12  # ~9.9 TFLOPs of convolutions for a 1024x1024 image
    assert big.linear == 4 * small.linear  # convolutions scale with pixels
    # Mid-block self-attention: one head of 512 channels over all h*w latent positions.
    assert big.attention == 4 * (128 * 128) ** 2 * 512
    assert big.other == 0


def test_a_ras_sparse_step_attends_active_queries_to_every_key() -> None:
    """FLUX.1-dev at 1024 x 1024, half the tokens computed: linear layers on the active tokens only, every
    attention layer (19 double + 38 single) active x all, counted from the stand-in processors that run."""
    from ralu_flux.flops_profile import FluxFlopsProfile

    profile = FluxFlopsProfile.from_source("flux-dev")
    tokens, active, text, width = 4096, 2048, 512, 24 * 128
    cached = profile.forward(active, attended_tokens=tokens)
    dropped = profile.forward(active)
    assert cached.linear == dropped.linear < profile.forward(tokens).linear
    assert cached.attention == 57 * 4 * width * (active + text) * (tokens + text)
    assert dropped.attention == 57 * 4 * width * (active + text) ** 2
