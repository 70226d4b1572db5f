"""What the Lumina-Next adapter knows about its model, on a tiny random-weight LuminaPipeline built offline."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.errors import CallError
from ralu_core.sampling.tokens import TokenState, downsample_nearest, gather_tokens, image_to_tokens
from ralu_lumina.adapter import LuminaAdapter
from ralu_lumina.flops_profile import LuminaFlopsProfile, load_lumina_config
from ralu_lumina.testing import make_lumina_pipeline

CALL = {"clean_caption": False}


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipeline = make_lumina_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def prepared(pipe: Any, height: int, width: int, **kwargs: Any) -> Any:
    call = {"prompt": "a red circle", "height": height, "width": width, **kwargs}
    bound = LuminaAdapter().bind(pipe, 1, (), call)
    assert bound.prepare is not None
    return bound.prepare()


@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_the_half_resolution_stage_is_the_pipelines_own_half_size_image(pipe, guidance: float) -> None:  # type: ignore[no-untyped-def]
    """Stage 0 at 64 x 96 evaluates what LuminaPipeline evaluates for a 32 x 48 image: its RoPE scaling for the
    smaller size, its proportional scale for the smaller token count. One Euler step from sigma 1 to 0 shows the
    pipeline's velocity: latents - result."""
    small = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(3))
    kwargs = {**CALL, "guidance_scale": guidance}
    stepped = pipe(
        "a red circle", height=32, width=48, num_inference_steps=1, latents=small, output_type="latent", **kwargs
    )
    expected = image_to_tokens(small - stepped.images, 2)
    call = prepared(pipe, 64, 96, **kwargs)
    full = torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")
    state = downsample_nearest(TokenState.full_resolution(image_to_tokens(full, 2), call.grid))
    assert torch.equal(state.values, image_to_tokens(small, 2))
    with torch.no_grad(), call.running():
        velocity = call.predict(state, torch.tensor(1.0), None)
    torch.testing.assert_close(velocity, expected, rtol=0, atol=1e-6)


def test_tokens_in_any_order_get_the_rope_of_their_cells(pipe) -> None:  # type: ignore[no-untyped-def]
    """A strip of the tokens, shuffled per image, through the transformer with each image's RoPE rows gives
    each token what the dense forward gives it (the same attention, permuted)."""
    call = prepared(pipe, 64, 96, prompt=["a red circle", "a blue square"], **CALL)
    noise = torch.randn(2, call.grid.num_tokens, call.grid.token_dim, generator=torch.Generator().manual_seed(1))
    state = TokenState.full_resolution(noise, call.grid)
    order = torch.stack([torch.randperm(24, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    with torch.no_grad(), call.running():
        dense = call.predict(state, torch.tensor(0.6), None)
        shuffled = call.predict(state, torch.tensor(0.6), order)
    torch.testing.assert_close(shuffled, gather_tokens(dense, order), rtol=0, atol=1e-5)


def test_the_pipelines_patch_embedding_comes_back_after_an_error(pipe) -> None:  # type: ignore[no-untyped-def]
    embedder = pipe.transformer.patch_embedder
    fast = ralu_core.accelerate(pipe, "ras-lumina")
    with pytest.raises(ValueError):
        fast("a red circle", height=64, width=96, guidance_scale=4.0, generator=[torch.Generator()] * 3, **CALL)
    assert pipe.transformer.patch_embedder is embedder


@pytest.mark.parametrize(
    ("recipe", "height", "message"),
    [
        ("ralu-lumina-4x", 80, r"multiple of 32 pixels .* x 2 for its half-resolution stage\).*height=80"),
        ("ras-lumina", 72, r"multiple of 16 pixels .*height=72 \(nearest valid: 64 or 80\)"),
        ("ras-lumina", 6160, r"LuminaPipeline positions up to 384 tokens a side \(6144 px\)"),
    ],
)
def test_sizes_that_do_not_fit_are_refused_before_encoding(pipe, recipe: str, height: int, message: str) -> None:  # type: ignore[no-untyped-def]
    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        with pytest.raises(CallError, match=message):
            ralu_core.accelerate(pipe, recipe)("a", height=height, width=64, **CALL)
    finally:
        hook.remove()
    assert encoded == []


def analytic_linear_flops(config: dict[str, Any], image_tokens: int, text_tokens: int) -> float:
    """Hand count of one LuminaNextDiT2DModel forward's matmuls (2 FLOPs per multiply-add), batch 1: per block,
    per image token the self-attention's q, k, v (keys and values grouped to kv_heads x head_dim), the
    cross-attention's q (diffusers computes it again), the shared output projection and the SwiGLU feed-forward;
    per text token the cross-attention's keys and values; per sample the adaLN modulations. Plus the patch
    embedding and the final layer per image token, and the time and caption embeddings."""
    d, heads, kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_kv_heads"]
    kv = d // heads * kv_heads
    mod = min(d, 1024)
    ffn = config["multiple_of"] * -(-int(2 * (4 * d) / 3) // config["multiple_of"])
    caption = config["cross_attention_dim"]
    per_image_token = 2 * (d * d + 2 * d * kv) + 2 * d * d + 2 * d * d + 2 * 3 * d * ffn
    per_text_token = 2 * 2 * caption * kv
    per_block = image_tokens * per_image_token + text_tokens * per_text_token + 2 * mod * 4 * d
    patch = config["patch_size"] ** 2 * config["in_channels"]
    edges = image_tokens * (2 * patch * d + 2 * d * patch * 2) + 2 * mod * d
    embeddings = 2 * (256 * mod + mod * mod) + 2 * caption * mod
    return float(config["num_layers"] * per_block + edges + embeddings)


@pytest.mark.parametrize(("side", "text"), [(1024, 128), (512, 32)])
def test_the_full_size_count_agrees_with_a_hand_count(side: int, text: int) -> None:
    config = load_lumina_config("transformer")
    profile = LuminaFlopsProfile.from_source("lumina-next-sft")
    profile.text_tokens = text
    tokens = profile.grid(side, side).num_tokens
    counted = profile.forward(tokens).linear
    assert abs(counted - analytic_linear_flops(config, tokens, text)) / counted < 1e-3
    assert profile.baseline_steps == 30


def test_a_ras_sparse_step_is_counted_at_its_active_tokens() -> None:
    profile = LuminaFlopsProfile.from_source("lumina-next-sft")
    dense, sparse = profile.forward(4096), profile.forward(2048, attended_tokens=4096)
    assert abs(sparse.linear / dense.linear - 0.5) < 0.01  # per-sample modulations and text keys do not halve
    assert abs(sparse.attention / dense.attention - 0.5) < 0.05  # queries halve, keys stay 4096
