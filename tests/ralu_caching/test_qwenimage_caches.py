"""The caches on Qwen-Image (blocks declared by its adapter, diffusers' own caches by name), under RALU, whose token
count changes between stages, with true CFG: each runs, leaves the pipeline as it was, and a batch equals single
calls; a cache that reuses work changes the latents, one that never reuses them does not."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.recipes import load_recipe_text
from ralu_core.testing.conformance import assert_same_snapshot, pipeline_snapshot
from ralu_qwenimage.testing import make_qwenimage_pipeline

CALL = {"height": 64, "width": 96, "output_type": "latent", "negative_prompt": "blurry", "true_cfg_scale": 4.0}
PROMPTS = ("a red circle", "a blue square on the grass")  # different lengths: a text padding mask


@pytest.fixture(scope="module")
def qwen() -> Any:
    pipe = make_qwenimage_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe("a", num_inference_steps=2, **{**CALL, "output_type": "pt"})  # the lazy state of the pipeline's own call
    return pipe


def ralu_with(cache: str) -> ralu_core.Recipe:
    """ralu-qwenimage-4x's plan with `cache` on its stages."""
    return load_recipe_text(
        "name: qwen-cache\nmodel: qwenimage\nschedule: nt-dm\nstages:\n  - {steps: 5, end: 0.3, level: 1}\n"
        "  - {steps: 6, end: 0.45, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.3}}\n"
        "  - {steps: 7, end: 1.0, transition: nt-dm-upsample, selector: all}\n"
        f"cache: [{cache}]\n"
    )


def latents(pipe: Any, recipe: Any, prompts: Any, seeds: tuple[int, ...]) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return ralu_core.accelerate(pipe, recipe)(prompts, generator=generators, **CALL).images  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "cache",
    [
        "{name: deepcache, interval: 2}",
        "{name: first-block, threshold: 0.2}",
        "{name: delta-dit}",
        "{name: db-cache}",
        "{name: taylorseer}",
        "{name: toca}",
    ],
)
def test_a_cache_runs_on_qwenimage_under_ralu_and_a_batch_equals_single_calls(qwen, cache: str) -> None:  # type: ignore[no-untyped-def]
    before = pipeline_snapshot(qwen)
    recipe = ralu_with(cache)
    batch = latents(qwen, recipe, list(PROMPTS), (0, 1))
    singles = torch.cat([latents(qwen, recipe, p, (s,)) for p, s in zip(PROMPTS, (0, 1), strict=True)])
    assert torch.isfinite(batch).all() and (batch - singles).abs().max() < 1e-5
    uncached = latents(qwen, "ralu-qwenimage-4x", list(PROMPTS), (0, 1))
    assert (batch - uncached).abs().max() > 1e-4, "the cache reused nothing"
    assert_same_snapshot(before, pipeline_snapshot(qwen))


@pytest.mark.parametrize(
    "cache",
    [
        "{name: diffusers, method: first-block, options: {threshold: 0.2}}",
        "{name: diffusers, method: taylorseer, options: {cache_interval: 2}}",
    ],
)
def test_diffusers_caches_run_on_qwenimage_under_ralu(qwen, cache: str) -> None:  # type: ignore[no-untyped-def]
    """diffusers' caches decide for the whole batch (FirstBlockCache: one threshold test), so a batch is not single
    calls there; they run, reuse work and leave the pipeline as it was."""
    before = pipeline_snapshot(qwen)
    batch = latents(qwen, ralu_with(cache), list(PROMPTS), (0, 1))
    uncached = latents(qwen, "ralu-qwenimage-4x", list(PROMPTS), (0, 1))
    assert torch.isfinite(batch).all()
    assert (batch - uncached).abs().max() > 1e-4, "the cache reused nothing"
    assert_same_snapshot(before, pipeline_snapshot(qwen))
