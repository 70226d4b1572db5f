"""torch.compile of the denoiser's blocks under every kind of FLUX recipe: the same images, one graph per
stage shape, nothing compiled after the first call of a size (no recompilation storm). The eager backend
runs dynamo's capture and guards without code generation, so this runs in seconds on a CPU."""

from __future__ import annotations

import json

import pytest
import torch

import ralu_core
from ralu_core.cli import main
from ralu_core.errors import RaluError
from ralu_core.pipelines.compiling import compile_denoiser, graphs_compiled, repeated_blocks
from ralu_flux.flops import load_flux_dev_config
from ralu_flux.random_weights import RandomTextFluxPipeline, random_flux_pipeline
from ralu_flux.testing import tiny_flux_pipeline

KWARGS = {"height": 64, "width": 96, "output_type": "latent", "max_sequence_length": 16}


def _run(fast: ralu_core.AcceleratedPipeline) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    return fast(["a red circle", "a blue square"], generator=generators, **KWARGS).images  # type: ignore[no-any-return]


def _flux(double: int, single: int) -> RandomTextFluxPipeline:
    """A small FLUX with this many blocks (random weights, random text embeddings of FLUX.1-dev's width)."""
    transformer = load_flux_dev_config("transformer") | {
        "num_layers": double,
        "num_single_layers": single,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "axes_dims_rope": [4, 6, 6],
    }
    vae = load_flux_dev_config("vae") | {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}
    pipe = random_flux_pipeline(transformer, vae, load_flux_dev_config("scheduler"), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _compiled_graphs(recipe: str, double: int, single: int) -> int:
    """Graphs compiled by the first call of `recipe` on a compiled FLUX of this depth, after checking that
    the compiled call gives the eager call's latents and that a second call compiles nothing."""
    torch._dynamo.reset()
    pipe = _flux(double, single)
    fast = ralu_core.accelerate(pipe, recipe)
    eager = _run(fast)
    assert compile_denoiser(pipe.transformer, backend="eager") == double + single
    before = graphs_compiled()
    first = _run(fast)
    compiled = graphs_compiled() - before
    again = graphs_compiled()
    second = _run(fast)
    assert graphs_compiled() == again  # the same size again: nothing recompiles
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    torch.testing.assert_close(second, eager, rtol=0, atol=0)
    return compiled


def test_compiled_blocks_give_the_same_latents_and_one_set_of_graphs_per_shape() -> None:
    """Graphs are per block class and token count, shared by every block of the class: a deeper model
    compiles no more (FLUX.1-dev's 57 blocks would otherwise each compile their own, past dynamo's limit).
    Shown under RAS (its stand-in processors inside the blocks); the conformance suite compiles every recipe,
    and SD3's test shows the same under RALU."""
    recipe = "ras-flux"
    shallow = _compiled_graphs(recipe, 1, 2)
    assert shallow >= 4  # two block classes, at least two token counts
    assert _compiled_graphs(recipe, 2, 4) == shallow


def test_repeated_blocks_are_the_classes_the_model_declares() -> None:
    transformer = tiny_flux_pipeline().transformer
    blocks = repeated_blocks(transformer)
    assert {type(b).__name__ for b in blocks} == {"FluxTransformerBlock", "FluxSingleTransformerBlock"}
    assert len(blocks) == len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)
    with pytest.raises(RaluError, match="unknown compile mode 'fastest'; use one of default, reduce-overhead"):
        compile_denoiser(transformer, mode="fastest")
    with pytest.raises(RaluError, match="Linear has no repeated blocks to compile"):
        compile_denoiser(torch.nn.Linear(2, 2))


def test_bench_counts_the_graphs_each_recipe_compiles(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    argv = ["bench", "--model", "flux-tiny", "--height", "64", "--width", "64", "--steps", "4", "--no-decode"]
    argv += ["--recipes", "flux-baseline", "ralu-flux-7x", "--compile", "default", "--compile-backend", "eager"]
    argv += ["--prompt", "a red circle", "--prompt", "a blue square", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "torch.compile mode default, backend eager" in out and "graphs compiled (warm-up / timed)" in out
    report = json.loads((tmp_path / "report.json").read_text())
    graphs = report["graphs_compiled"]
    assert graphs["flux-baseline"]["warmup"] >= 2 and graphs["ralu-flux-7x"]["warmup"] >= 2
    assert graphs["flux-baseline"]["timed"] == 0 and graphs["ralu-flux-7x"]["timed"] == 0
    assert report["settings"]["compiled"] is True


def test_bench_refuses_compiling_without_a_warm_up(capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["bench", "--model", "flux-tiny", "--compile", "default", "--warmup", "0"])
    assert code == 2
    assert "--compile needs --warmup 1 or more" in capsys.readouterr().err
