"""`ralu bench` reports what adaptive caches reused next to the FLOPs, which count them as full."""

from __future__ import annotations

import ralu_core
from ralu_core.measurement.bench import BenchPlan, markdown_table, run_bench

from .helpers import with_cache


def test_the_measured_reuse_of_an_adaptive_cache_is_reported(flux) -> None:  # type: ignore[no-untyped-def]
    plain = ralu_core.accelerate(flux, "ralu-flux-7x")
    cached = ralu_core.accelerate(flux, with_cache("ralu-flux-7x", "{name: first-block, threshold: 1.0}"))
    plan = BenchPlan(
        recipes=[plain, cached],
        prompts=["a red circle", "a blue square"],
        seeds=[0],
        call_kwargs={"height": 128, "width": 128},
        steps=28,
        decode=False,
    )
    profile = plain.adapter.pipeline_flops_profile(flux, plan.call_kwargs)
    result = run_bench(plan, [], profile)
    reused, total = result.reuse[cached.recipe.name]
    assert total == 2 * 10 and 0 < reused < total  # 2 samples x 10 evaluations of one image each
    assert plain.recipe.name not in result.reuse
    rows = {row["recipe"]: row for row in result.summary()}
    assert rows[cached.recipe.name]["reused_share"] == reused / total
    # FLOPs cannot know what an adaptive cache skips: they count it as full, and say so.
    assert rows[cached.recipe.name]["tflops_all"] == rows[plain.recipe.name]["tflops_all"]
    assert any("first-block counted as full" in note for note in result.notes)
    table = markdown_table(result, "test")
    assert "| reused |" in table


def test_a_diffusers_cache_whose_reuse_is_not_counted_is_not_promised_a_reused_column(flux) -> None:  # type: ignore[no-untyped-def]
    plain = ralu_core.accelerate(flux, "ralu-flux-7x")
    cached = ralu_core.accelerate(
        flux, with_cache("ralu-flux-7x", "{name: diffusers, method: first-block, options: {threshold: 0.2}}")
    )
    plan = BenchPlan(
        recipes=[plain, cached],
        prompts=["a red circle"],
        seeds=[0],
        call_kwargs={"height": 128, "width": 128},
        steps=28,
        decode=False,
    )
    result = run_bench(plan, [], plain.adapter.pipeline_flops_profile(flux, plan.call_kwargs))
    rows = {row["recipe"]: row for row in result.summary()}
    assert rows[cached.recipe.name]["reused_share"] is None and not result.reuse
    table = markdown_table(result, "test")
    assert "| reused |" not in table and "`reused`" not in table
    note = next(n for n in result.notes if "diffusers counted as full" in n)
    assert "decided inside diffusers and not counted, so only the wall-clock shows it" in note
