"""torch.compile of SD3's joint blocks under RALU and RAS: the same latents, graphs per token count shared by
every block (a deeper model compiles no more), nothing compiled after the first call of a size. Eager backend:
dynamo's capture and guards without code generation, seconds on a CPU."""

from __future__ import annotations

import torch

import ralu_core
from ralu_core.pipelines.compiling import compile_denoiser, graphs_compiled
from ralu_sd3.flops import load_sd3_config
from ralu_sd3.random_weights import RandomTextSD3Pipeline, random_sd3_pipeline

KWARGS = {"height": 64, "width": 96, "output_type": "latent", "max_sequence_length": 8}


def _sd3(layers: int) -> RandomTextSD3Pipeline:
    transformer = load_sd3_config("sd35-large", "transformer") | {
        "num_layers": layers,
        "num_attention_heads": 2,
        "caption_projection_dim": 128,
    }
    vae = load_sd3_config("sd3-medium", "vae") | {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}
    pipe = random_sd3_pipeline(transformer, vae, load_sd3_config("sd3-medium", "scheduler"), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(fast: ralu_core.AcceleratedPipeline) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    return fast(["a red circle", "a blue square"], generator=generators, **KWARGS).images  # type: ignore[no-any-return]


def _compiled_graphs(recipe: str, layers: int) -> int:
    torch._dynamo.reset()
    pipe = _sd3(layers)
    fast = ralu_core.accelerate(pipe, recipe)
    eager = _run(fast)
    assert compile_denoiser(pipe.transformer, backend="eager") == layers  # SD3's joint blocks (a ModuleList)
    before = graphs_compiled()
    first = _run(fast)
    compiled = graphs_compiled() - before
    again = graphs_compiled()
    second = _run(fast)
    assert graphs_compiled() == again
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(second, eager, rtol=0, atol=0)
    return compiled


def test_compiled_joint_blocks_give_the_same_latents_and_one_set_of_graphs_per_shape() -> None:
    """Shown under RALU (three token counts); the conformance suite compiles every recipe, and FLUX's test
    shows the same under RAS."""
    recipe = "ralu-sd3-3x"
    shallow = _compiled_graphs(recipe, 3)
    assert shallow >= 2
    assert _compiled_graphs(recipe, 5) == shallow
