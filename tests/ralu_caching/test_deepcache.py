"""`deepcache` on DiT blocks: the middle blocks run on full steps only, on a fixed schedule that is
counted exactly; interval 1 changes nothing."""

from __future__ import annotations

import pytest
import torch

import ralu_core
from ralu_caching.deepcache import DeepCacheConfig, DeepCacheDiT, full_step
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.pipelines.testing_hooks import hook_snapshot
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import resolve_recipe
from ralu_core.testing import seeded_generators

from .helpers import with_cache

CALL = {"height": 64, "width": 64, "output_type": "latent"}


def test_full_steps_come_at_each_stage_start_then_every_interval() -> None:
    assert [full_step(j, 3) for j in range(7)] == [True, False, False, True, False, False, True]


@pytest.mark.parametrize(
    ("fixture", "recipe", "middle", "stages"),
    [
        ("flux_mid", "ralu-flux-7x", "single_transformer_blocks", None),
        ("sd3_mid", "ralu-sd3-3x", "transformer_blocks", None),
        ("flux_mid", "ralu-flux-7x", "single_transformer_blocks", [0, 2]),
    ],
)
def test_middle_blocks_run_on_full_steps_only(request, fixture: str, recipe: str, middle: str, stages) -> None:  # type: ignore[no-untyped-def]
    """In the cache's stages only: outside them (`stages:`) every step runs every block, as `ralu flops` counts."""
    pipe = request.getfixturevalue(fixture)
    before = hook_snapshot(pipe.transformer)
    block = getattr(pipe.transformer, middle)[2]
    first = pipe.transformer.transformer_blocks[0]
    # Count inner modules: a block skipped by the cache is still called, but its attention does not run.
    handles = [
        block.attn.register_forward_pre_hook(lambda *a: middle_calls.append(1)),
        first.attn.register_forward_pre_hook(lambda *a: first_calls.append(1)),
    ]
    middle_calls: list[int] = []
    first_calls: list[int] = []
    try:
        only = "" if stages is None else f", stages: {stages}"
        fast = ralu_core.accelerate(pipe, with_cache(recipe, f"{{name: deepcache, interval: 2{only}}}"))
        out = fast("a red circle", generator=seeded_generators(0), **CALL).images
    finally:
        for handle in handles:
            handle.remove()
    steps = [s.spec.steps for s in fast.runtime.stages]
    cached = range(len(steps)) if stages is None else stages
    assert len(first_calls) == sum(steps)
    expected = [sum(full_step(j, 2) for j in range(n)) if k in cached else n for k, n in enumerate(steps)]
    assert len(middle_calls) == sum(expected)
    assert expected != steps
    assert torch.isfinite(out).all()
    assert hook_snapshot(pipe.transformer) == before


def test_interval_one_is_the_plain_recipe(sd3_mid) -> None:  # type: ignore[no-untyped-def]
    plain = ralu_core.accelerate(sd3_mid, "ralu-sd3-3x")("a", generator=seeded_generators(0), **CALL).images
    cached = ralu_core.accelerate(sd3_mid, with_cache("ralu-sd3-3x", "{name: deepcache, interval: 1}"))
    assert torch.equal(cached("a", generator=seeded_generators(0), **CALL).images, plain)


def test_batch_equals_singles(flux_mid) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(
        flux_mid, with_cache("ralu-flux-7x", "{name: deepcache, interval: 3, head: 2, tail: 2}")
    )
    prompts = ["a red circle", "a blue square"]
    batch = fast(prompts, generator=seeded_generators(1, 2), **CALL).images
    singles = [fast(p, generator=seeded_generators(s), **CALL).images[0] for p, s in zip(prompts, (1, 2), strict=True)]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-5)


def test_flops_count_what_a_reusing_step_runs() -> None:
    from ralu_flux.flops_profile import FluxFlopsProfile

    registry = Registry.collect(create_plugin_manager())
    profile = FluxFlopsProfile.from_source("flux-dev")
    runtime = resolve_recipe(with_cache("flux-baseline", "{name: deepcache, interval: 2, head: 1, tail: 1}"), registry)
    cost = recipe_cost(runtime, profile, 512, 512, steps=4)
    full, reusing = cost.stages[0].step_costs[0], cost.stages[0].step_costs[1]
    assert cost.stages[0].step_kinds == ("full", "middle blocks reused", "full", "middle blocks reused")
    # FLUX.1-dev has 19 double and 38 single blocks; a reusing step runs the first and the last only, so it
    # costs the full step minus 18 double and 37 single blocks (every double block costs the same, and so
    # does every single one): check against the difference of two exact counts.
    tokens = 1024
    double = profile.forward(tokens, DeepCacheDiT(DeepCacheConfig(head=1, tail=38))._skip_middle)
    single = profile.forward(tokens, DeepCacheDiT(DeepCacheConfig(head=19, tail=1))._skip_middle)
    per_double = (full.linear - double.linear) / 18
    per_single = (full.linear - single.linear) / 37
    assert reusing.linear == pytest.approx(full.linear - 18 * per_double - 37 * per_single)
    assert 0 < reusing.linear < 0.1 * full.linear
