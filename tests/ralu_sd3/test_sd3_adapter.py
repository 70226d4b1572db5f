"""The SD3 adapter end to end on tiny random-weight SD3 and SD3.5-style pipelines built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ralu_core
from ralu_core.sampling.tokens import image_to_tokens
from ralu_core.testing import seeded_generators
from ralu_sd3 import adapter as sd3_adapter
from ralu_sd3.forward import embed_tokens, strip_positions, tokens_to_strip
from ralu_sd3.positions import SinCosGrid, sincos_1d

CALL = {"max_sequence_length": 16, "output_type": "np"}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("steps", "height", "width", "guidance"),
    [(1, 64, 64, 7.0), (4, 64, 96, 7.0), (9, 96, 64, 4.5), (4, 64, 64, 1.0), (28, 32, 32, 7.0)],
)
def test_baseline_recipe_reproduces_the_pipeline(sd3, steps, height, width, guidance) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**CALL, "height": height, "width": width, "num_inference_steps": steps, "guidance_scale": guidance}
    expected = sd3("a red circle", negative_prompt="blurry", generator=gen(0), **kwargs).images
    fast = ralu_core.accelerate(sd3, "sd3-baseline")
    actual = fast("a red circle", negative_prompt="blurry", generator=gen(0), **kwargs).images
    assert actual.shape == expected.shape == (1, height, width, 3)
    assert np.abs(actual - expected).max() < 1e-5


def test_baseline_default_is_28_steps(sd3) -> None:  # type: ignore[no-untyped-def]
    calls: list[object] = []
    handle = sd3.transformer.register_forward_pre_hook(lambda *a: calls.append(a))
    try:
        ralu_core.accelerate(sd3, "sd3-baseline")("a", height=32, width=32, generator=gen(0), **CALL)
    finally:
        handle.remove()
    assert len(calls) == 28


def grid_positions(rows: int, cols: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r, c], dim=-1).reshape(-1, 2).double()


@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (4, 6), (6, 4), (2, 3), (8, 8)])
def test_position_embedding_equals_patch_embed_on_a_grid(sd3, rows: int, cols: int) -> None:  # type: ignore[no-untyped-def]
    patch_embed = sd3.transformer.pos_embed
    latent = torch.randn(2, 16, rows * 2, cols * 2, generator=gen(1))
    expected = patch_embed(latent)
    embedding = SinCosGrid.of(patch_embed).embed(grid_positions(rows, cols), rows, cols)
    actual = embed_tokens(patch_embed, image_to_tokens(latent, 2), embedding[None])
    assert (actual - expected).abs().max() < 1e-6


def test_half_offsets_use_the_same_formula_between_grid_points(sd3) -> None:  # type: ignore[no-untyped-def]
    grid = SinCosGrid.of(sd3.transformer.pos_embed)
    rows, cols = 4, 6
    emb = grid.embed(torch.tensor([[1.5, 2.5]], dtype=torch.float64), rows, cols)[0]
    top, left = (grid.max_size - rows) // 2, (grid.max_size - cols) // 2
    scale = grid.max_size / grid.base_size
    row = torch.tensor([(top + 1.5) / scale])
    col = torch.tensor([(left + 2.5) / scale])
    half = grid.embed_dim // 2
    expected = torch.cat([sincos_1d(col, half), sincos_1d(row, half)], dim=1)[0].float()
    assert torch.allclose(emb, expected, atol=1e-6)


def test_token_strip_through_the_models_forward_equals_its_dense_forward(sd3) -> None:  # type: ignore[no-untyped-def]
    transformer = sd3.transformer
    latent = torch.randn(2, 16, 8, 12, generator=gen(2))
    embeds = torch.randn(2, 10, transformer.config.joint_attention_dim, generator=gen(3))
    pooled = torch.randn(2, transformer.config.pooled_projection_dim, generator=gen(4))
    timestep = torch.tensor([700.0, 300.0])
    expected = transformer(
        hidden_states=latent,
        timestep=timestep,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        return_dict=False,
    )[0]
    embedding = SinCosGrid.of(transformer.pos_embed).embed(grid_positions(4, 6), 4, 6)[None]
    original = transformer.pos_embed
    with strip_positions(transformer, embedding):
        strip = transformer(
            hidden_states=tokens_to_strip(image_to_tokens(latent, 2), 16, 2),
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
    assert transformer.pos_embed is original
    assert (image_to_tokens(strip, 2) - image_to_tokens(expected, 2)).abs().max() < 1e-5


def record_embeddings(monkeypatch):  # type: ignore[no-untyped-def]
    seen: list[tuple[torch.Tensor, int, int]] = []
    original = SinCosGrid.embed

    def recording(self, positions, rows, cols):  # type: ignore[no-untyped-def]
        seen.append((positions.clone(), rows, cols))
        return original(self, positions, rows, cols)

    monkeypatch.setattr(sd3_adapter.SinCosGrid, "embed", recording)
    return seen


def test_positions_in_each_stage(sd3, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen = record_embeddings(monkeypatch)
    dense: list[tuple[int, ...]] = []
    handle = sd3.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: dense.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True
    )
    try:
        ralu_core.accelerate(sd3, "ralu-sd3-3x")("a", height=128, width=96, generator=gen(0), **CALL)
    finally:
        handle.remove()
    rows, cols = 128 // 16, 96 // 16
    low = (rows // 2) * (cols // 2)
    upsampled = int(low * 0.2)
    mixed = low - upsampled + 4 * upsampled
    # Every stage runs the model's own forward (CFG batch of 2): stages 1 (3 steps) and 3 (6 steps) on
    # dense grids, stage 2 (3 steps) on a strip of its mixed tokens (one row of 2 x 2 latent patches).
    strip = (2, 16, 2, 2 * mixed)
    assert dense == [(2, 16, rows, cols)] * 3 + [strip] * 3 + [(2, 16, rows * 2, cols * 2)] * 6
    # Stage 2's tokens get embeddings on the half-resolution grid's crop.
    assert len(seen) == 3 and all((r, c) == (rows // 2, cols // 2) for _, r, c in seen)
    positions = seen[0][0][0]
    assert positions.shape == (low - upsampled + 4 * upsampled, 2)
    fractional = (positions != positions.round()).any(dim=1)
    assert int(fractional.sum()) == 3 * upsampled
    assert set((positions - positions.floor()).reshape(-1).tolist()) == {0.0, 0.5}


def test_cfg_pair_shares_tokens_and_selection_is_per_image(sd3, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    inputs: list[torch.Tensor] = []
    handle = sd3.transformer.pos_embed.proj.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    try:
        fast = ralu_core.accelerate(sd3, "ralu-sd3-3x")
        # 128 x 96: 12 half-res tokens, int(12 * 0.2) = 2 upsampled in stage 2 (a mixed state)
        fast(["a red circle", "a blue square"], height=128, width=96, generator=seeded_generators(0, 1), **CALL)
    finally:
        handle.remove()
    mixed = [x for x in inputs if x.shape[-1] == 2]  # token path: one p x p patch per row
    assert mixed, "stage 2 should run through the token path"
    per_call = mixed[0].reshape(4, -1, *mixed[0].shape[1:])  # [uncond a, uncond b, cond a, cond b]
    assert torch.equal(per_call[0], per_call[2]) and torch.equal(per_call[1], per_call[3])


def test_a_batch_with_cfg_equals_single_calls(sd3) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(sd3, "ralu-sd3-3x")
    kwargs = {**CALL, "height": 128, "width": 96, "negative_prompt": ["dark", "blurry"]}
    batch = fast(["a red circle", "a blue square"], generator=seeded_generators(3, 4), **kwargs).images
    kwargs.pop("negative_prompt")
    first = fast("a red circle", negative_prompt="dark", generator=seeded_generators(3), **kwargs).images
    second = fast("a blue square", negative_prompt="blurry", generator=seeded_generators(4), **kwargs).images
    assert np.abs(batch - np.concatenate([first, second])).max() < 1e-5


def test_num_images_per_prompt_and_guidance_one(sd3) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(sd3, "ralu-sd3-2x")
    images = fast(
        "a red circle",
        num_images_per_prompt=2,
        guidance_scale=1.0,
        generator=seeded_generators(5, 6),
        height=64,
        width=64,
        **CALL,
    ).images
    single = fast(
        "a red circle", guidance_scale=1.0, generator=seeded_generators(6), height=64, width=64, **CALL
    ).images
    assert images.shape == (2, 64, 64, 3) and np.abs(images[1:] - single).max() < 1e-5


def test_sd35_style_model_end_to_end(sd35) -> None:  # type: ignore[no-untyped-def]
    assert sd35.transformer.config.qk_norm == "rms_norm" and sd35.transformer.config.dual_attention_layers
    kwargs = {**CALL, "height": 64, "width": 96}
    expected = sd35("a red circle", num_inference_steps=4, generator=gen(0), **kwargs).images
    baseline = ralu_core.accelerate(sd35, "sd3-baseline")
    assert (
        np.abs(baseline("a red circle", num_inference_steps=4, generator=gen(0), **kwargs).images - expected).max()
        < 1e-5
    )
    fast = ralu_core.accelerate(sd35, "ralu-sd3-3x")
    images = fast(["a red circle", "a blue square"], generator=seeded_generators(0, 1), **kwargs).images
    assert images.shape == (2, 64, 96, 3) and np.isfinite(images).all()
    again = fast(["a red circle", "a blue square"], generator=seeded_generators(0, 1), **kwargs).images
    assert np.array_equal(images, again)


@pytest.mark.parametrize(
    ("recipe", "height", "message"),
    [
        ("ralu-sd3-3x", 80, r"multiple of 32 .*height=80 \(nearest valid: 64 or 96\)"),
        ("sd3-baseline", 72, r"multiple of 16 .*height=72 \(nearest valid: 64 or 80\)"),
        ("sd3-baseline", 512, r"exceeds this model's position embedding"),
        ("ralu-sd3-3x", 64.5, r"height must be a whole number of pixels, got 64.5"),
        ("ralu-sd3-3x", 2**20, r"height must be between 1 and 16384 pixels"),
    ],
)
def test_sizes_that_do_not_fit_are_refused_before_encoding(sd3, recipe, height, message) -> None:  # type: ignore[no-untyped-def]
    calls: list[object] = []
    handle = sd3.text_encoder.register_forward_pre_hook(lambda *a: calls.append(a))
    try:
        with pytest.raises(ValueError, match=message):
            ralu_core.accelerate(sd3, recipe)("a", height=height, width=64, **CALL)
    finally:
        handle.remove()
    assert calls == []


def test_unsupported_and_fixed_step_arguments(sd3) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(sd3, "ralu-sd3-2x")
    with pytest.raises(NotImplementedError, match="skip-layer guidance"):
        fast("a", skip_guidance_layers=[1], height=64, width=64)
    with pytest.raises(ValueError, match=r"'ralu-sd3-2x' fixes its steps per stage \(5, 6, 9\)"):
        fast("a", num_inference_steps=28, height=64, width=64)


def test_flux_recipes_are_refused_for_sd3(sd3) -> None:  # type: ignore[no-untyped-def]
    recipe = ralu_core.load_recipe_text("name: for-flux\nmodel: flux\nschedule: uniform\nstages:\n  - {level: 0}\n")
    with pytest.raises(ralu_core.RecipeError, match="this recipe is for 'flux' pipelines"):
        ralu_core.accelerate(sd3, recipe)


def test_an_integral_float_size_works_as_in_the_pipeline(sd3) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(sd3, "ralu-sd3-3x")
    as_float = fast("a", height=64.0, width=64.0, generator=seeded_generators(0), **CALL).images
    as_int = fast("a", height=64, width=64, generator=seeded_generators(0), **CALL).images
    assert np.array_equal(as_float, as_int)
