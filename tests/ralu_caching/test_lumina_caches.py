"""The caches on Lumina-Next, whose blocks diffusers does not describe (the adapter does): each runs, leaves the
pipeline as it was, and a batch equals single calls; the ones that need block declarations are refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.conformance import assert_same_snapshot, pipeline_snapshot
from ralu_core.errors import RecipeError
from ralu_core.recipes import load_recipe_text
from ralu_lumina.testing import make_lumina_pipeline

CALL = {"height": 64, "width": 96, "output_type": "latent", "clean_caption": False}
PROMPTS = ("a red circle", "a blue square")


@pytest.fixture(scope="module")
def lumina() -> Any:
    pipe = make_lumina_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe("a", num_inference_steps=1, **CALL)  # what the pipeline's own first call leaves (transformers' lazy hooks)
    return pipe


def recipe(cache: str) -> ralu_core.Recipe:
    return load_recipe_text(
        f"name: lumina-cache\nmodel: lumina\nschedule: uniform\nstages:\n  - {{level: 0, steps: 8}}\ncache: [{cache}]\n"
    )


@pytest.mark.parametrize(
    "cache",
    [
        "{name: deepcache}",
        "{name: first-block, threshold: 0.2}",
        "{name: delta-dit}",
        "{name: db-cache}",
        "{name: velocity-forecast}",
    ],
)
def test_a_cache_runs_on_lumina_and_a_batch_equals_single_calls(lumina, cache: str) -> None:  # type: ignore[no-untyped-def]
    before = pipeline_snapshot(lumina)
    fast = ralu_core.accelerate(lumina, recipe(cache))
    seeds = (0, 1)
    batch = fast(list(PROMPTS), generator=[torch.Generator().manual_seed(s) for s in seeds], **CALL).images
    singles = [
        fast(p, generator=[torch.Generator().manual_seed(s)], **CALL).images
        for p, s in zip(PROMPTS, seeds, strict=True)
    ]
    assert torch.isfinite(batch).all() and (batch - torch.cat(singles)).abs().max() < 1e-5
    assert_same_snapshot(before, pipeline_snapshot(lumina))


@pytest.mark.parametrize(("cache", "declaration"), [("taylorseer", "block_features"), ("toca", "token_features")])
def test_caches_inside_the_blocks_are_refused_until_the_adapter_declares_them(lumina, cache, declaration) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=rf"the 'lumina' adapter does not declare .*\({declaration}\)"):
        ralu_core.accelerate(lumina, recipe(f"{{name: {cache}}}"))
