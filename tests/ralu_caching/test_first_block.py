"""`first-block`: per-image decisions (an image's result never depends on its batch), on FLUX and on SD3
(where diffusers' own first-block cache fails), with hooks only for the duration of a call."""

from __future__ import annotations

import pytest
import torch

import ralu_core
from ralu_caching.first_block import FirstBlockCache, FirstBlockConfig
from ralu_core import RecipeError
from ralu_core.pipelines.testing_hooks import hook_snapshot
from ralu_core.testing import seeded_generators

from .helpers import run_twice, sd3_inputs, with_cache

CALL = {"height": 128, "width": 128, "output_type": "latent"}


def test_each_image_decides_for_itself(sd3) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(3)
    first = torch.randn(2, 16, 8, 8, generator=g)
    second = first.clone()
    second[0] += 1e-4 * torch.randn(16, 8, 8, generator=g)  # image 0 barely moves: it reuses
    second[1] += 2.0 * torch.randn(16, 8, 8, generator=g)  # image 1 changes: it computes
    cache = FirstBlockCache(FirstBlockConfig(threshold=0.05))
    batch = run_twice(sd3, first, second, slice(0, 2), cache)
    assert cache.measured_reuse() == (1, 4)
    alone = [
        run_twice(sd3, first, second, slice(i, i + 1), FirstBlockCache(FirstBlockConfig(threshold=0.05)))
        for i in range(2)
    ]
    assert torch.allclose(batch, torch.cat(alone), atol=1e-5)
    # The reused image got its cached result, not a fresh one.
    fresh = sd3.transformer(
        hidden_states=second[:1], return_dict=False, **{k: v[:1] for k, v in sd3_inputs(sd3, 2, 0).items()}
    )[0]
    assert not torch.allclose(batch[:1], fresh, atol=1e-6)


@pytest.mark.parametrize(("fixture", "recipe"), [("flux", "ralu-flux-7x"), ("sd3", "ralu-sd3-3x")])
def test_it_runs_under_ralu_and_leaves_the_model_as_it_was(request, fixture: str, recipe: str) -> None:  # type: ignore[no-untyped-def]
    pipe = request.getfixturevalue(fixture)
    plain = ralu_core.accelerate(pipe, recipe)("a red circle", generator=seeded_generators(0), **CALL).images
    # (A FluxPipeline call, plain or through ralu, leaves an empty hook registry on the transformer: diffusers
    # creates it when it resets cache state after a call. The cache must not leave anything beyond that.)
    before = hook_snapshot(pipe.transformer)
    registries = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "_diffusers_hook")]
    strict = ralu_core.accelerate(pipe, with_cache(recipe, "{name: first-block, threshold: 1.0e-9}"))
    # A threshold no change falls under reuses nothing: the result is RALU's own.
    assert torch.equal(strict("a red circle", generator=seeded_generators(0), **CALL).images, plain)
    loose = ralu_core.accelerate(pipe, with_cache(recipe, "{name: first-block, threshold: 1.0}"))
    out = loose("a red circle", generator=seeded_generators(0), **CALL).images
    reused, total = loose.runtime.caches[0].cache.measured_reuse()
    assert 0 < reused < total and torch.isfinite(out).all()
    assert hook_snapshot(pipe.transformer) == before
    assert [n for n, m in pipe.transformer.named_modules() if hasattr(m, "_diffusers_hook")] == registries


def test_batch_equals_singles_under_ralu(flux) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(flux, with_cache("ralu-flux-7x", "{name: first-block, threshold: 0.3}"))
    prompts = ["a red circle", "a blue square"]
    batch = fast(prompts, generator=seeded_generators(5, 6), **CALL).images
    singles = [fast(p, generator=seeded_generators(s), **CALL).images[0] for p, s in zip(prompts, (5, 6), strict=True)]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-5)


def test_a_threshold_out_of_range_is_refused(flux) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]\.threshold: must be in \(0, 10\]"):
        ralu_core.accelerate(flux, with_cache("ralu-flux-7x", "{name: first-block, threshold: 0}"))
