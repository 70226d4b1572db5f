"""The caches on Lumina-Next, whose blocks diffusers does not describe (the adapter does): each runs, leaves the
pipeline as it was, and a batch equals single calls; TaylorSeer forecasts the branches the adapter declares;
ToCa reuses both attentions and their projection and runs the feed-forward on the fresh tokens only."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
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
        "{name: toca}",
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


def test_toca_reuses_the_attentions_and_runs_the_feed_forward_on_the_fresh_tokens(lumina) -> None:  # type: ignore[no-untyped-def]
    """8 steps, warm-up 3, interval 3: full steps 0-2 and 5, ToCa steps 3, 4, 6, 7. At a ToCa step neither attention
    nor their shared output projection runs; the feed-forward runs on half the image tokens (a 64 x 96 image:
    4 x 6 = 24 tokens)."""
    block = lumina.transformer.layers[1]
    projection = block.attn2.to_out[0]  # hooked itself: counted inside its own forward, not by a pre-hook
    watched = {
        "self-attention": block.attn1.to_q,
        "cross-attention": block.attn2.to_q,
        "feed-forward": block.feed_forward.linear_1,
    }
    rows: dict[str, list[int]] = {name: [] for name in (*watched, "projection")}
    handles = [
        module.register_forward_pre_hook(lambda m, args, name=name: rows[name].append(args[0].shape[1]))
        for name, module in watched.items()
    ]
    projected = projection.forward

    def counted(tokens: torch.Tensor) -> torch.Tensor:
        rows["projection"].append(tokens.shape[1])
        return projected(tokens)

    projection.forward = counted
    toca = "{name: toca, interval: 3, warmup: 3, cache_ratio: 0.5, schedule: constant}"
    try:
        ralu_core.accelerate(lumina, recipe(toca))("a", generator=torch.Generator().manual_seed(0), **CALL)
    finally:
        del projection.forward
        for handle in handles:
            handle.remove()
    assert rows["self-attention"] == rows["cross-attention"] == rows["projection"] == [24] * 4
    assert rows["feed-forward"] == [24, 24, 24, 12, 12, 24, 12, 12]


def test_tocas_explicit_attention_is_luminas_own_at_full_steps(lumina) -> None:  # type: ignore[no-untyped-def]
    """Every step full (interval 1): ToCa computes each self-attention from its map (for the scores), with
    Lumina's proportional softmax scale, grouped key heads and boolean mask, and gives the plain sampler's image."""
    every_step = recipe("{name: toca, interval: 1, warmup: 1}")
    seeded = {"generator": torch.Generator().manual_seed(3)}
    full = ralu_core.accelerate(lumina, every_step)("a red circle", **seeded, **CALL).images
    seeded = {"generator": torch.Generator().manual_seed(3)}
    uncached = load_recipe_text("name: plain\nmodel: lumina\nschedule: uniform\nstages:\n  - {level: 0, steps: 8}\n")
    plain = ralu_core.accelerate(lumina, uncached)("a red circle", **seeded, **CALL)
    torch.testing.assert_close(full, plain.images, rtol=0, atol=1e-5)
