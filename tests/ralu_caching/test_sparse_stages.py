"""Block-level caches reuse block features token by token, so a stage that computes another subset of tokens
at each step (RAS's step_tokens) cannot feed them: such a recipe is refused when it is resolved, with the
path, before any model runs (it used to fail with torch's "size of tensor a must match" after 3 calls)."""

from __future__ import annotations

import pytest

import ralu_core
from ralu_core.errors import RecipeError
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import resolve_recipe

from .helpers import with_cache

CACHES = [
    "{name: first-block, threshold: 0.2}",
    "{name: deepcache, interval: 2}",
    "{name: taylorseer, interval: 2, order: 0, warmup: 1}",
    "{name: diffusers, method: first-block, options: {threshold: 0.2}}",
]


@pytest.mark.parametrize("cache", CACHES)
def test_a_block_cache_in_a_stage_with_step_tokens_is_refused_before_any_model_runs(cache: str) -> None:
    registry = Registry.collect(create_plugin_manager())
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]: .* stage\(s\) 2 compute a different subset of tokens"):
        resolve_recipe(with_cache("ralu-ras-flux-7x", cache), registry)
    limited = cache[:-1] + ", stages: [0, 1]}"  # the same cache kept out of the sparse stage: fine
    resolve_recipe(with_cache("ralu-ras-flux-7x", limited), registry)


def test_it_is_refused_before_the_pipeline_is_called(flux_mid) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    handle = flux_mid.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(RecipeError, match="first-block"):
            ralu_core.accelerate(flux_mid, with_cache("ralu-ras-flux-7x", CACHES[0]))
    finally:
        handle.remove()
    assert calls == []
