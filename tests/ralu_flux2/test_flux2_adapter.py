"""What the FLUX.2 adapter knows about its model, on a tiny random-weight Flux2Pipeline built offline."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.errors import CallError
from ralu_core.sampling.tokens import TokenState, downsample_nearest, gather_tokens
from ralu_flux2.adapter import Flux2Adapter
from ralu_flux2.flops_profile import Flux2FlopsProfile, load_flux2_dev_config
from ralu_flux2.testing import make_flux2_pipeline

CALL = {"max_sequence_length": 64}
FLUX2_DEV_TRANSFORMER_PARAMETERS = 32_223_281_152


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipeline = make_flux2_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("half", [False, True])
def test_tokens_in_any_order_get_the_positions_of_their_cells(pipe, half: bool) -> None:  # type: ignore[no-untyped-def]
    """A strip of every token, shuffled differently per image (so each row gets its own RoPE table through the
    stand-in processors), gives each token what the dense forward gives it, at full and at half resolution."""
    call = {"prompt": ["a red circle", "a blue square on the grass"], "height": 64, "width": 96, **CALL}
    bound = Flux2Adapter().bind(pipe, 1, (), call)
    assert bound.prepare is not None
    prepared = bound.prepare()
    noise = torch.randn(
        2, prepared.grid.num_tokens, prepared.grid.token_dim, generator=torch.Generator().manual_seed(1)
    )
    state = TokenState.full_resolution(noise, prepared.grid)
    if half:
        state = downsample_nearest(state)
    order = torch.stack([torch.randperm(state.num_tokens, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    with torch.no_grad(), prepared.running():
        dense = prepared.predict(state, torch.tensor(0.6), None)
        shuffled = prepared.predict(state, torch.tensor(0.6), order)
    torch.testing.assert_close(shuffled, gather_tokens(dense, order), rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [4, 50])
def test_the_baseline_follows_the_shift_of_its_step_count_and_decodes_as_the_pipeline(pipe, steps: int) -> None:  # type: ignore[no-untyped-def]
    """compute_empirical_mu depends on the steps: the baseline equals the pipeline at each count; decoded through the
    VAE's BatchNorm statistics to the same pixels."""
    kwargs = {"height": 64, "width": 96, "num_inference_steps": steps, "output_type": "np", **CALL}
    plain = pipe(prompt="a red circle", generator=generators(0), **kwargs).images
    fast = ralu_core.accelerate(pipe, "flux2-baseline")
    ours = fast(prompt="a red circle", generator=generators(0), **kwargs).images
    assert plain.shape == (1, 64, 96, 3) and (plain == ours).all()


def test_a_prompt_given_where_the_pipeline_takes_its_image_is_refused_saying_so(pipe) -> None:  # type: ignore[no-untyped-def]
    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        with pytest.raises(CallError, match=r"first positional argument is `image`.*prompt=\.\.\."):
            ralu_core.accelerate(pipe, "ralu-flux2-4x")("a red circle", height=64, width=64, **CALL)
        with pytest.raises(CallError, match=r"multiple of 32 pixels .* half-resolution stage\).*height=80"):
            ralu_core.accelerate(pipe, "ralu-flux2-4x")(prompt="a", height=80, width=64, **CALL)
    finally:
        hook.remove()
    assert encoded == []


def analytic_linear_flops(config: dict[str, Any], image_tokens: int, text_tokens: int) -> float:
    """Hand count of one Flux2Transformer2DModel forward's per-token matmuls (2 FLOPs per multiply-add): per double
    block and token of either stream, q, k, v and the output projection (4 d^2) and the SwiGLU feed-forward (3d x 2
    in, 3d out: 9 d^2); per single block and token, the fused q/k/v + feed-forward input (9 d^2) and the fused output
    (4 d^2); the image input and output projections and the text input projection. Per-sample modulations left
    out (a few 1e-5 of the total)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = image_tokens + text_tokens
    blocks = (config["num_layers"] + config["num_single_layers"]) * tokens * 2 * 13 * d * d
    edges = image_tokens * 2 * 2 * config["in_channels"] * d + text_tokens * 2 * config["joint_attention_dim"] * d
    return float(blocks + edges)


def test_the_full_size_architecture_and_its_count() -> None:
    import diffusers

    config = load_flux2_dev_config("transformer")
    with torch.device("meta"):
        model = diffusers.Flux2Transformer2DModel.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == FLUX2_DEV_TRANSFORMER_PARAMETERS
    profile = Flux2FlopsProfile.from_source("flux2-dev")
    tokens = profile.grid(1024, 1024).num_tokens
    counted = profile.forward(tokens).linear
    assert abs(counted - analytic_linear_flops(config, tokens, 512)) / counted < 1e-3
    sparse = profile.forward(tokens // 2, attended_tokens=tokens)
    assert 0.5 < sparse.linear / counted < 0.6  # the 512 text tokens do not halve


def test_ralu_runs_on_a_bfloat16_pipeline() -> None:
    """RALU's Canny selection decodes a float32 clean estimate with the bf16 VAE (the pipeline's dtype)."""
    pipe = make_flux2_pipeline(seed=0, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"height": 64, "width": 96, "output_type": "np", **CALL}
    image = ralu_core.accelerate(pipe, "ralu-flux2-4x")(prompt="a red circle", generator=generators(0), **kwargs).images
    assert image.shape == (1, 64, 96, 3) and bool((image >= 0).all() and (image <= 1).all())


def test_no_guidance_scale_is_refused(pipe) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CallError, match="needs a guidance_scale"):
        ralu_core.accelerate(pipe, "flux2-baseline")(prompt="a", height=64, width=64, guidance_scale=None, **CALL)
