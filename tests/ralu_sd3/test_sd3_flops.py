"""SD3 / SD3.5 FLOP counts on the meta device against an analytic count derived from the architecture."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel

from ralu_core.measurement.flops import FlopCount, count_flops, meta_module
from ralu_sd3.flops import DEFAULT_TEXT_TOKENS, load_sd3_config, transformer_forward_flops, vae_decode_flops


def analytic_transformer_flops(cfg: dict[str, Any], n_img: int, n_txt: int, batch: int = 1) -> FlopCount:
    """Hand count of SD3Transformer2DModel's matmuls (2 FLOPs per multiply-add).

    Per token row of a Linear(in, out): 2*in*out. With D = heads*head_dim (= caption_projection_dim),
    S = n_img + n_txt:
    * embedders: the patch conv (C*p*p -> D) per image token, context_embedder (J -> D) per text token;
      on the per-sample conditioning vector: timestep MLP (256 -> D -> D) and pooled text (P -> D -> D);
    * joint block: adaLN-Zero for both streams (2 x D->6D); q,k,v + output projection per stream
      (4 x D->D on all S rows); MLP D->4D->D per stream                       => 24*S*D^2 + 24*D^2;
    * last block (context_pre_only): adaLN-Zero (D->6D) on images, AdaLayerNormContinuous (D->2D) on
      text; q,k,v on S rows but output projection and MLP on image rows only => 6*S*D^2 + 18*N*D^2 + 16*D^2;
    * dual-attention block (SD3.5-medium style): adaLN D->9D instead of D->6D and a second image-only
      attention (4 x D->D on N rows)                                        => + 8*N*D^2 + 6*D^2;
    * final: AdaLayerNormContinuous (D->2D) and proj_out (D -> p^2 * out_channels) on image rows;
    * attention: 4*S^2*D per block, plus 4*N^2*D for each second attention. q/k RMS norms are not matmuls.
    """
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    assert cfg["caption_projection_dim"] == d
    n, s = n_img, n_img + n_txt
    p, c_in = cfg["patch_size"], cfg["in_channels"]
    c_out = cfg.get("out_channels") or c_in
    layers = cfg["num_layers"]
    dual = [i for i in cfg.get("dual_attention_layers", ()) if i < layers]
    assert layers - 1 not in dual
    embed = 2 * n * c_in * p * p * d + 2 * n_txt * cfg["joint_attention_dim"] * d
    embed += 2 * (256 * d + d * d) + 2 * (cfg["pooled_projection_dim"] * d + d * d)
    blocks = (layers - 1) * (24 * s * d * d + 24 * d * d) + 6 * s * d * d + 18 * n * d * d + 16 * d * d
    blocks += len(dual) * (8 * n * d * d + 6 * d * d)
    final = 2 * d * 2 * d + 2 * n * d * p * p * c_out
    return FlopCount(
        linear=batch * (embed + blocks + final),
        attention=batch * (layers * 4 * s * s * d + len(dual) * 4 * n * n * d),
    )


def _dense_forward_flops(cfg: dict[str, Any], grid_h: int, grid_w: int, n_txt: int) -> FlopCount:
    """The model's own forward on a dense latent (with its position-embedding crop), for comparison."""
    model = meta_module(SD3Transformer2DModel, cfg)
    p = cfg["patch_size"]
    meta = torch.device("meta")
    inputs = {
        "hidden_states": torch.empty(1, cfg["in_channels"], grid_h * p, grid_w * p, device=meta),
        "encoder_hidden_states": torch.empty(1, n_txt, cfg["joint_attention_dim"], device=meta),
        "pooled_projections": torch.empty(1, cfg["pooled_projection_dim"], device=meta),
        "timestep": torch.empty(1, device=meta),
        "return_dict": False,
    }
    with torch.no_grad():
        return count_flops(lambda: model(**inputs))


SMALL: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 3,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 24,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 40,
    "out_channels": 16,
    "pos_embed_max_size": 16,
}


def test_configs_load_and_build_on_meta() -> None:
    medium = meta_module(SD3Transformer2DModel, load_sd3_config("sd3-medium", "transformer"))
    large = meta_module(SD3Transformer2DModel, load_sd3_config("sd35-large", "transformer"))
    assert sum(p.numel() for p in medium.parameters()) == pytest.approx(2.03e9, rel=0.01)  # "2B"
    assert sum(p.numel() for p in large.parameters()) == pytest.approx(8.06e9, rel=0.01)  # "8B"
    assert (medium.config.num_layers, medium.inner_dim, medium.config.qk_norm) == (24, 1536, None)
    assert (large.config.num_layers, large.inner_dim, large.config.qk_norm) == (38, 2432, "rms_norm")
    for model in (medium, large):
        assert model.config.pos_embed_max_size == 192 and model.config.sample_size == 128
        assert tuple(model.config.dual_attention_layers) == ()
    for arch in ("sd3-medium", "sd35-large"):
        config = load_sd3_config(arch, "vae")  # type: ignore[arg-type]
        vae = meta_module(AutoencoderKL, config)
        assert vae.config.latent_channels == 16 and 2 ** (len(vae.config.block_out_channels) - 1) == 8
        assert (vae.config.scaling_factor, vae.config.shift_factor) == (1.5305, 0.0609)
        assert not vae.config.use_quant_conv and not vae.config.use_post_quant_conv
    assert load_sd3_config("sd3-medium", "vae") == load_sd3_config("sd35-large", "vae")
    with pytest.raises(ValueError):
        load_sd3_config("sd3-medium", "unet")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        load_sd3_config("flux-dev", "vae")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arch", "image_tokens", "tflops"),
    [("sd3-medium", 4096, 8.904), ("sd3-medium", 1024, 2.107), ("sd35-large", 4096, 31.121)],
)
def test_real_configs_match_analytic_count(arch: str, image_tokens: int, tflops: float) -> None:
    cfg = load_sd3_config(arch, "transformer")  # type: ignore[arg-type]
    counted = transformer_forward_flops(cfg, image_tokens)
    assert counted == analytic_transformer_flops(cfg, image_tokens, DEFAULT_TEXT_TOKENS)
    print(
        f"{arch} forward @{image_tokens}+{DEFAULT_TEXT_TOKENS} tokens: linear {counted.linear / 1e12:.3f}, "
        f"attention {counted.attention / 1e12:.3f}, total {counted.tflops():.3f} TFLOPs"
    )
    assert counted.tflops() == pytest.approx(tflops, abs=0.001)


def test_token_path_equals_dense_forward_on_a_grid() -> None:
    cfg = load_sd3_config("sd3-medium", "transformer")
    assert transformer_forward_flops(cfg, 64 * 64, 333) == _dense_forward_flops(cfg, 64, 64, 333)
    assert transformer_forward_flops(SMALL, 5 * 7, 11) == _dense_forward_flops(SMALL, 5, 7, 11)


@pytest.mark.parametrize("variant", ["sd3", "sd35-medium-like"])
def test_small_configs_any_token_count_and_batch(variant: str) -> None:
    cfg = dict(SMALL)
    if variant != "sd3":
        cfg.update(qk_norm="rms_norm", dual_attention_layers=(0, 1))
    # 37 tokens form no grid; 300 exceed the 16x16 position grid: the token path counts them anyway.
    for image_tokens, text_tokens in ((37, 11), (300, 5), (1, 0)):
        one = transformer_forward_flops(cfg, image_tokens, text_tokens)
        assert one == analytic_transformer_flops(cfg, image_tokens, text_tokens)
    three = transformer_forward_flops(cfg, 37, 11, batch=3)
    assert three == 3 * transformer_forward_flops(cfg, 37, 11) == analytic_transformer_flops(cfg, 37, 11, 3)
    with pytest.raises(ValueError):
        transformer_forward_flops(cfg, 0)


def test_vae_decode_counts() -> None:
    cfg = load_sd3_config("sd3-medium", "vae")
    big = vae_decode_flops(cfg, 128, 128)
    small = vae_decode_flops(cfg, 64, 64)
    print(f"SD3 VAE decode 128x128 latent: {big.tflops():.3f} TFLOPs; 64x64: {small.tflops():.3f} TFLOPs")
    assert big.linear == 4 * small.linear  # convolutions scale with pixels
    assert big.linear == pytest.approx(9.922e12, rel=1e-3)
    assert big.attention == 4 * (128 * 128) ** 2 * 512  # one 512-channel head over all latent positions
    assert big.other == 0
    assert vae_decode_flops(cfg, 64, 64, batch=2) == 2 * small
    with pytest.raises(ValueError):
        vae_decode_flops(cfg, 0, 64)


def test_a_ras_sparse_step_attends_active_queries_to_every_key() -> None:
    """SD3.5 with a second, image-only attention (sd35-tiny): each joint attention is active x (all + text),
    the second active x all, counted from the stand-in processors that run (CFG: batch 2)."""
    from ralu_sd3.flops_profile import SD3FlopsProfile
    from ralu_sd3.testing import make_sd3_pipeline

    pipe = make_sd3_pipeline("sd35-tiny")
    profile = SD3FlopsProfile.from_pipeline(pipe, {"max_sequence_length": 8})
    config = pipe.transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    tokens, active, text = 24, 12, profile.text_tokens
    cached = profile.forward(active, attended_tokens=tokens)
    assert cached.linear == profile.forward(active).linear
    joint = config.num_layers * (active + text) * (tokens + text)
    second = len(config.dual_attention_layers) * active * tokens
    assert cached.attention == profile.cfg_batch * 4 * width * (joint + second)
