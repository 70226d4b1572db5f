"""torch.compile of the denoiser's blocks under every caching recipe: caches that reuse whole steps
(TaylorSeer), skip blocks (DeepCache, first-block) or hook into them (diffusers' caches) give the eager latents
exactly, and a second call of the same size compiles nothing, even though their state changes at every step.
The eager backend runs dynamo's capture and guards without code generation, so this runs in seconds."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_caching.plugin import RECIPES
from ralu_core.pipelines.compiling import compile_denoiser, graphs_compiled
from ralu_core.recipes import Recipe
from ralu_core.testing import seeded_generators
from ralu_flux.testing import make_flux_pipeline
from ralu_sd3.testing import make_sd3_pipeline

from .conftest import quiet
from .helpers import with_cache

CALL = {"height": 64, "width": 96, "output_type": "latent"}
PROMPTS = ["a red circle", "a blue square"]

DIT_RECIPES = sorted(name for name in RECIPES if name != "sd-deepcache")  # sd-deepcache is for U-Nets
FROM_RECIPES = {  # test id: (recipe, its cache, calls of one size after which nothing compiles)
    "flux-first-block": ("ralu-flux-7x", "{name: first-block, threshold: 0.3}", 1),
    "sd3-first-block": ("ralu-sd3-3x", "{name: first-block, threshold: 0.3}", 1),
    "sd3-velocity-forecast": ("ralu-sd3-3x", "{name: velocity-forecast, interval: 2, warmup: 2, stages: [2]}", 1),
    "flux-deepcache-mixed-stage": ("ralu-flux-7x", "{name: deepcache, interval: 2, stages: [1, 2]}", 1),
    "flux-diffusers-first-block": (
        "ralu-flux-7x",
        "{name: diffusers, method: first-block, options: {threshold: 0.2}}",
        1,
    ),
    "sd3-diffusers-taylorseer": (
        "ralu-sd3-3x",
        "{name: diffusers, method: taylorseer, options: {cache_interval: 2}}",
        1,
    ),
    "flux-diffusers-pab": (
        "ralu-flux-7x",
        "{name: diffusers, method: pyramid-attention-broadcast, options: "
        "{spatial_attention_block_skip_range: 2, spatial_attention_timestep_skip_range: [-1, 1001]}}",
        2,  # its hooks sit on the attention layers inside the compiled blocks: traced, they settle in two calls
    ),
}


def _pipeline(recipe: str) -> Any:
    """A fresh mid-size pipeline (enough blocks for a head and a tail), so that no test sees another's
    compiled blocks."""
    return quiet(make_flux_pipeline("mid", seed=0) if "flux" in recipe else make_sd3_pipeline("sd3-mid", seed=0))


def _run(fast: ralu_core.AcceleratedPipeline) -> torch.Tensor:
    return fast(PROMPTS, generator=seeded_generators(0, 1), **CALL).images  # type: ignore[no-any-return]


def _check_compiled(pipe: Any, recipe: str | Recipe, settling_calls: int = 1) -> int:
    """The compiled calls' latents equal the eager call's, and after `settling_calls` calls of one size nothing
    compiles any more. Returns the graphs the first compiled call made."""
    torch._dynamo.reset()
    fast = ralu_core.accelerate(pipe, recipe)
    eager = _run(fast)
    assert compile_denoiser(pipe.transformer, backend="eager") > 0
    before = graphs_compiled()
    first = _run(fast)
    compiled = graphs_compiled() - before
    torch.testing.assert_close(first, eager, rtol=0, atol=0)
    for call in range(1, settling_calls + 1):
        again = graphs_compiled()
        later = _run(fast)
        torch.testing.assert_close(later, eager, rtol=0, atol=0)
        if call == settling_calls:
            assert graphs_compiled() == again, (
                f"call {call + 1} of one size compiled {graphs_compiled() - again} graphs"
            )
        else:
            assert graphs_compiled() > again, "settled sooner than expected: lower settling_calls"
    return compiled


SETTLING_CALLS: dict[str, int] = {}
"""Recipes whose graphs settle only after more than one call of a size (none: TaylorSeer's and ToCa's hooks sit
on modules inside the compiled blocks, and their own frames are never compiled, so each hooked module is
compiled as a frame of its own, once per token count, in the first call)."""


@pytest.mark.parametrize("recipe", DIT_RECIPES)
def test_every_caching_recipe_runs_compiled_with_the_eager_latents(recipe: str) -> None:
    assert _check_compiled(_pipeline(recipe), recipe, SETTLING_CALLS.get(recipe, 1)) >= 1


@pytest.mark.parametrize("case", sorted(FROM_RECIPES))
def test_every_kind_of_cache_in_a_recipe_runs_compiled_with_the_eager_latents(case: str) -> None:
    """Caches that hook into the blocks are created afresh for each call: their decisions stay in Python
    around the compiled block (a compiled hook would be guarded on the last call's objects and state, and
    the next call would compile again)."""
    recipe, cache, settling_calls = FROM_RECIPES[case]
    assert _check_compiled(_pipeline(recipe), with_cache(recipe, cache), settling_calls) >= 1
