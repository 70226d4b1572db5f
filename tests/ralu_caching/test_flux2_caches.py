"""The caches on FLUX.2 (its double- and single-stream blocks declared by its adapter, diffusers' own caches by name),
under RALU, whose token count changes between stages: each runs, leaves the pipeline as it was, and a batch equals
single calls; a cache that reuses work changes the latents."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.recipes import load_recipe_text
from ralu_core.testing.conformance import assert_same_snapshot, pipeline_snapshot
from ralu_flux2.testing import make_flux2_pipeline

CALL = {"height": 64, "width": 96, "output_type": "latent", "max_sequence_length": 64}
PROMPTS = ("a red circle", "a blue square on the grass")


@pytest.fixture(scope="module")
def flux2() -> Any:
    pipe = make_flux2_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt="a", num_inference_steps=2, **{**CALL, "output_type": "pt"})  # the lazy state of its own call
    return pipe


def ralu_with(cache: str) -> ralu_core.Recipe:
    """ralu-flux2-4x's plan with `cache` on its stages."""
    return load_recipe_text(
        "name: flux2-cache\nmodel: flux2\nschedule: nt-dm\nstages:\n  - {steps: 5, end: 0.3, level: 1}\n"
        "  - {steps: 6, end: 0.45, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.3}}\n"
        "  - {steps: 7, end: 1.0, transition: nt-dm-upsample, selector: all}\n"
        f"cache: [{cache}]\n"
    )


def latents(pipe: Any, recipe: Any, prompts: Any, seeds: tuple[int, ...]) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return ralu_core.accelerate(pipe, recipe)(prompt=prompts, generator=generators, **CALL).images  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "cache",
    [
        "{name: deepcache, interval: 2}",
        "{name: delta-dit}",
        "{name: taylorseer}",
    ],
)
def test_a_cache_runs_on_flux2_under_ralu_and_a_batch_equals_single_calls(flux2, cache: str) -> None:  # type: ignore[no-untyped-def]
    before = pipeline_snapshot(flux2)
    recipe = ralu_with(cache)
    batch = latents(flux2, recipe, list(PROMPTS), (0, 1))
    singles = torch.cat([latents(flux2, recipe, p, (s,)) for p, s in zip(PROMPTS, (0, 1), strict=True)])
    assert torch.isfinite(batch).all() and (batch - singles).abs().max() < 1e-5
    uncached = latents(flux2, "ralu-flux2-4x", list(PROMPTS), (0, 1))
    assert (batch - uncached).abs().max() > 1e-4, "the cache reused nothing"
    assert_same_snapshot(before, pipeline_snapshot(flux2))


def test_diffusers_taylorseer_cache_runs_on_flux2_under_ralu(flux2) -> None:  # type: ignore[no-untyped-def]
    before = pipeline_snapshot(flux2)
    cache = "{name: diffusers, method: taylorseer, options: {cache_interval: 2}}"
    batch = latents(flux2, ralu_with(cache), list(PROMPTS), (0, 1))
    uncached = latents(flux2, "ralu-flux2-4x", list(PROMPTS), (0, 1))
    assert torch.isfinite(batch).all() and (batch - uncached).abs().max() > 1e-4
    assert_same_snapshot(before, pipeline_snapshot(flux2))


@pytest.mark.parametrize(
    ("cache", "why"),
    [
        ("{name: db-cache}", r"db-cache carries a residual .* return their streams differently.*head: 8"),
        ("{name: first-block, threshold: 0.2}", r"return their streams differently"),
        ("{name: delta-dit, boundary: 2}", r"delta-dit carries a residual from a Flux2TransformerBlock"),
        ("{name: toca}", r"does not know the token-wise modules of Flux2SingleTransformerBlock"),
        ("{name: diffusers, method: first-block}", r"the last block returns no text stream"),
    ],
)
def test_caches_that_need_one_stream_layout_are_refused_saying_why(flux2, cache: str, why: str) -> None:  # type: ignore[no-untyped-def]
    """FLUX.2's single-stream blocks take the text and image tokens as one sequence, and fuse the feed-forward into
    the attention module: DBCache's residual across both kinds of block and ToCa's token-wise modules are refused,
    before any step runs."""
    before = pipeline_snapshot(flux2)
    with pytest.raises((ralu_core.PluginError, ralu_core.RecipeError), match=why):
        latents(flux2, ralu_with(cache), list(PROMPTS), (0, 1))
    assert_same_snapshot(before, pipeline_snapshot(flux2))
