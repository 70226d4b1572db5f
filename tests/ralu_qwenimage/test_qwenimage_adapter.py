"""What the Qwen-Image adapter knows about its model, on a tiny random-weight QwenImagePipeline built offline."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.errors import CallError
from ralu_core.sampling.tokens import TokenState, downsample_nearest, gather_tokens
from ralu_qwenimage.adapter import QwenImageAdapter, rope_rows
from ralu_qwenimage.flops_profile import QwenImageFlopsProfile, load_qwen_image_config
from ralu_qwenimage.testing import make_qwenimage_pipeline

CFG = {"negative_prompt": "blurry", "true_cfg_scale": 4.0}


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipeline = make_qwenimage_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def prepared(pipe: Any, height: int, width: int, **kwargs: Any) -> Any:
    call = {"prompt": ["a red circle", "a blue square on the grass"], "height": height, "width": width, **kwargs}
    bound = QwenImageAdapter().bind(pipe, 1, (), call)
    assert bound.prepare is not None
    return bound.prepare()


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize(("rows", "cols"), [(4, 6), (3, 5), (1, 7)])
def test_rope_rows_at_whole_positions_are_the_models_own_table(pipe, rows: int, cols: int) -> None:  # type: ignore[no-untyped-def]
    """Centred rows and columns (odd sides included), frame 0: bit for bit what QwenEmbedRope builds."""
    embed = pipe.transformer.pos_embed
    table, _ = embed([(1, rows, cols)], device=torch.device("cpu"), max_txt_seq_len=4)
    cells = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(1, -1, 2)
    ours = rope_rows(embed, cells.to(torch.float64), rows, cols)
    assert torch.equal(ours[0], table)


@pytest.mark.parametrize("half", [False, True])
def test_tokens_in_any_order_get_the_positions_of_their_cells(pipe, half: bool) -> None:  # type: ignore[no-untyped-def]
    """A strip of every token, shuffled per image, with RoPE rows computed per image (and the text's positions from
    the frame) gives each token what the model's own dense forward gives it: at full resolution, and at half
    resolution, where the model's own table is a half-size image's and the text starts nearer."""
    call = prepared(pipe, 64, 96, **CFG)
    noise = torch.randn(2, call.grid.num_tokens, call.grid.token_dim, generator=torch.Generator().manual_seed(1))
    state = TokenState.full_resolution(noise, call.grid)
    if half:
        state = downsample_nearest(state)
    count = state.num_tokens
    order = torch.stack([torch.randperm(count, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    with torch.no_grad(), call.running():
        dense = call.predict(state, torch.tensor(0.6), None)
        shuffled = call.predict(state, torch.tensor(0.6), order)
    torch.testing.assert_close(shuffled, gather_tokens(dense, order), rtol=0, atol=1e-5)


def test_the_baseline_decodes_the_pipelines_own_images(pipe) -> None:  # type: ignore[no-untyped-def]
    """The 5-D latents, un-normalised by the VAE's per-channel mean and std, decoded to the same pixels."""
    kwargs = {"height": 64, "width": 96, "num_inference_steps": 3, "output_type": "np", **CFG}
    plain = pipe("a red circle", generator=generators(0), **kwargs).images
    ours = ralu_core.accelerate(pipe, "qwenimage-baseline")("a red circle", generator=generators(0), **kwargs).images
    assert plain.shape == (1, 64, 96, 3) and (plain == ours).all()


@pytest.mark.parametrize(
    "guidance",
    [
        {},
        {"true_cfg_scale": 4.0},
        {"negative_prompt": " ", "true_cfg_scale": 4.0},
        {"negative_prompt": ["blurry", "dark"], "true_cfg_scale": 4.0},
    ],
    ids=["no-cfg", "no-negative", "one-negative", "negative-per-prompt"],
)
def test_the_baseline_is_the_pipeline_with_and_without_true_cfg(pipe, guidance: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Prompts of different lengths (a padding mask); one negative for every prompt goes in as the pipeline passes
    it."""
    kwargs = {"height": 64, "width": 96, "num_inference_steps": 3, "output_type": "latent", **guidance}
    prompts = ["a red circle", "a blue square on the grass"]
    plain = pipe(prompts, generator=generators(0, 1), **kwargs).images
    ours = ralu_core.accelerate(pipe, "qwenimage-baseline")(prompts, generator=generators(0, 1), **kwargs).images
    assert torch.equal(plain, ours)


def test_images_per_prompt_read_their_own_prompts_padding(pipe) -> None:  # type: ignore[no-untyped-def]
    """Prompts of different lengths, two images each: each image equals the single call of its prompt (diffusers
    0.42's encode_prompt repeats the padding mask in another order than the embeddings; ours keeps them paired)."""
    kwargs = {"height": 64, "width": 96, "output_type": "latent", **CFG}
    prompts = ["a red circle", "a blue square on the green grass at night"]
    fast = ralu_core.accelerate(pipe, "ralu-qwenimage-4x")
    batch = fast(prompts, num_images_per_prompt=2, generator=generators(0, 1, 2, 3), **kwargs).images
    singles = [
        fast(prompt, num_images_per_prompt=2, generator=generators(*seeds), **kwargs).images
        for prompt, seeds in zip(prompts, ((0, 1), (2, 3)), strict=True)
    ]
    torch.testing.assert_close(batch, torch.cat(singles), rtol=0, atol=1e-5)


def test_ralus_last_stage_ends_at_the_schedulers_terminal_sigma(pipe) -> None:  # type: ignore[no-untyped-def]
    """Qwen-Image's scheduler stretches its schedule to a last sigma of 0.02; RALU's last stage is stretched to it
    (the timestep the transformer reads is the sigma)."""
    seen: list[float] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(float(kwargs["timestep"][0])), with_kwargs=True
    )
    try:
        ralu_core.accelerate(pipe, "ralu-qwenimage-4x")("a red circle", height=64, width=96, output_type="latent")
    finally:
        hook.remove()
    assert len(seen) == 18 and abs(seen[-1] - 0.02) < 1e-6


@pytest.mark.parametrize(
    ("recipe", "height", "message"),
    [
        ("ralu-qwenimage-4x", 80, r"multiple of 32 pixels .* x 2 for its half-resolution stage\).*height=80"),
        ("ras-qwenimage", 72, r"multiple of 16 pixels .*height=72 \(nearest valid: 64 or 80\)"),
    ],
)
def test_sizes_that_do_not_fit_are_refused_before_encoding(pipe, recipe: str, height: int, message: str) -> None:  # type: ignore[no-untyped-def]
    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        with pytest.raises(CallError, match=message):
            ralu_core.accelerate(pipe, recipe)("a", height=height, width=64)
    finally:
        hook.remove()
    assert encoded == []


def analytic_linear_flops(config: dict[str, Any], image_tokens: int, text_tokens: int) -> float:
    """Hand count of one QwenImageTransformer2DModel forward's matmuls (2 FLOPs per multiply-add), batch 1: per
    block, per image token the q, k, v and output projections and the 4x GELU feed-forward, the same per text
    token with the text stream's weights; per sample both streams' 6-way modulations. Plus the image and text input
    projections, the output projection, the final norm's modulation and the time embedding."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    per_token = 2 * (4 * d * d + 2 * 4 * d * d)
    per_block = (image_tokens + text_tokens) * per_token + 2 * 2 * d * 6 * d
    patch = config["in_channels"]
    out = config["patch_size"] ** 2 * config["out_channels"]
    edges = image_tokens * 2 * (patch * d + d * out) + text_tokens * 2 * config["joint_attention_dim"] * d
    embeddings = 2 * (256 * d + d * d) + 2 * d * 2 * d
    return float(config["num_layers"] * per_block + edges + embeddings)


@pytest.mark.parametrize(("side", "text"), [(1024, 128), (512, 32)])
def test_the_full_size_count_agrees_with_a_hand_count(side: int, text: int) -> None:
    config = load_qwen_image_config("transformer")
    profile = QwenImageFlopsProfile.from_source("qwen-image")
    profile.text_tokens = text
    tokens = profile.grid(side, side).num_tokens
    counted = profile.forward(tokens).linear
    assert profile.cfg_batch == 2 and profile.baseline_steps == 50
    assert abs(counted / 2 - analytic_linear_flops(config, tokens, text)) / counted < 1e-3
    single = profile.without_guidance_batch().forward(tokens).linear
    assert abs(single * 2 - counted) / counted < 1e-9


def test_a_ras_sparse_step_is_counted_at_its_active_tokens() -> None:
    profile = QwenImageFlopsProfile.from_source("qwen-image")
    dense, sparse = profile.forward(4096), profile.forward(2048, attended_tokens=4096)
    assert abs(sparse.linear / dense.linear - 0.5) < 0.03  # the text tokens and modulations do not halve
    assert 0.5 < sparse.attention / dense.attention < 0.55  # queries halve, keys stay 4096 (+ the text's)


def test_one_padded_negative_prompt_serves_every_prompt(pipe) -> None:  # type: ignore[no-untyped-def]
    """A single negative given as embeddings with padding (where the pipeline itself fails to broadcast) is
    repeated for every prompt: the images are those of one negative per prompt, the padding masked."""
    embeds, _ = pipe.encode_prompt("blurry")
    padded = torch.cat([embeds, torch.zeros(1, 3, embeds.shape[2])], dim=1)
    mask = torch.cat([torch.ones(1, embeds.shape[1]), torch.zeros(1, 3)], dim=1).long()
    kwargs = {"height": 64, "width": 96, "num_inference_steps": 3, "output_type": "latent", "true_cfg_scale": 4.0}
    prompts = ["a red circle", "a blue square on the grass"]
    fast = ralu_core.accelerate(pipe, "qwenimage-baseline")
    one = fast(
        prompts, negative_prompt_embeds=padded, negative_prompt_embeds_mask=mask, generator=generators(0, 1), **kwargs
    ).images
    each = fast(prompts, negative_prompt=["blurry", "blurry"], generator=generators(0, 1), **kwargs).images
    torch.testing.assert_close(one, each, rtol=0, atol=1e-5)


def test_what_the_adapter_does_not_model_is_refused_before_encoding() -> None:
    pipe = make_qwenimage_pipeline(seed=0)
    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    with pytest.raises(CallError, match=r"num_inference_steps=1 with a terminal sigma .* at least 2 steps"):
        ralu_core.accelerate(pipe, "qwenimage-baseline")("a", height=64, width=64, num_inference_steps=1)
    pipe.transformer.register_to_config(zero_cond_t=True)
    with pytest.raises(CallError, match=r"sets zero_cond_t .* ralu's token positions do not model"):
        ralu_core.accelerate(pipe, "ralu-qwenimage-4x")("a", height=64, width=64)
    hook.remove()
    assert encoded == []


def test_the_counted_passes_follow_the_calls_true_cfg(pipe) -> None:  # type: ignore[no-untyped-def]
    adapter = QwenImageAdapter()
    assert adapter.pipeline_flops_profile(pipe, {}).cfg_batch == 1  # type: ignore[attr-defined]
    assert adapter.pipeline_flops_profile(pipe, {"negative_prompt": " "}).cfg_batch == 2  # type: ignore[attr-defined]
    assert adapter.pipeline_flops_profile(pipe, {"negative_prompt": " ", "true_cfg_scale": 1.0}).cfg_batch == 1  # type: ignore[attr-defined]
