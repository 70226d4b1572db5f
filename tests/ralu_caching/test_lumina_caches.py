"""The caches on Lumina-Next, whose blocks diffusers does not describe (the adapter does): each runs, leaves the
pipeline as it was, and a batch equals single calls; TaylorSeer forecasts the branches the adapter declares;
ToCa, whose token-wise modules it does not declare yet, is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_core.errors import RecipeError
from ralu_core.recipes import load_recipe_text
from ralu_core.testing.conformance import assert_same_snapshot, pipeline_snapshot
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
        "{name: taylorseer}",
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


def test_taylorseer_forecasts_the_gated_branches_and_skips_the_attentions_that_feed_them(lumina) -> None:  # type: ignore[no-untyped-def]
    attention = lumina.transformer.layers[0].attn1
    original, runs = attention.processor, []

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return original(*args, **kwargs)

    attention.processor = counted
    try:
        ralu_core.accelerate(lumina, recipe("{name: taylorseer}"))("a", generator=torch.Generator(), **CALL)
    finally:
        attention.processor = original
    assert 0 < len(runs) < 8  # 8 steps, the forecast ones without attention


def test_toca_is_refused_until_the_adapter_declares_its_token_wise_modules(lumina) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=r"the 'lumina' adapter does not declare .*\(token_features\)"):
        ralu_core.accelerate(lumina, recipe("{name: toca}"))
