"""`delta-dit`: Δ-DiT's Δ-Cache: at a reusing step the cached range is skipped and the deviation it made at
the last full step is added to its current input; the rear range before the boundary, the front after;
exact FLOPs; the RALU paper's FLUX row."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_caching.delta_dit import DeltaDiTConfig, cached_range
from ralu_core.errors import ConfigFieldError
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.testing import seeded_generators

from .helpers import with_cache

CALL = {"height": 64, "width": 64, "output_type": "latent"}


def test_the_ranges_are_the_first_or_last_blocks() -> None:
    assert cached_range(57, None, "rear") == range(19, 57)  # FLUX: its 38 single-stream blocks
    assert cached_range(24, 6, "front") == range(0, 6)
    with pytest.raises(ValueError, match="at least one block left to run"):
        cached_range(12, 12, "rear")
    with pytest.raises(ConfigFieldError, match="step index"):
        DeltaDiTConfig(boundary=-1)


def _watch_range(transformer: Any, first: Any, last: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Any]]:
    entries: list[torch.Tensor] = []
    exits: list[torch.Tensor] = []
    handles = [
        first.register_forward_pre_hook(lambda m, a, k: entries.append(k["hidden_states"]), with_kwargs=True),
        last.register_forward_hook(lambda m, a, out: exits.append(out[1])),
    ]
    return entries, exits, handles


def test_a_reusing_step_adds_the_last_full_steps_deviation_to_the_ranges_input(flux_mid) -> None:  # type: ignore[no-untyped-def]
    """flux-mid has 4 double- and 8 single-stream blocks: the rear two thirds are the single-stream ones."""
    singles = flux_mid.transformer.single_transformer_blocks
    entries, exits, handles = _watch_range(flux_mid.transformer, singles[0], singles[-1])
    inner: list[int] = []
    handles.append(singles[3].proj_mlp.register_forward_pre_hook(lambda *a: inner.append(1)))
    fast = ralu_core.accelerate(flux_mid, with_cache("flux-baseline", "{name: delta-dit, interval: 2}"))
    try:
        fast("a red circle", generator=seeded_generators(0), num_inference_steps=4, **CALL)
    finally:
        for handle in handles:
            handle.remove()
    assert len(entries) == len(exits) == 4 and len(inner) == 2  # steps 0 and 2 full, 1 and 3 reuse
    for full, reused in ((0, 1), (2, 3)):
        expected = entries[reused] + (exits[full] - entries[full])
        torch.testing.assert_close(exits[reused], expected, rtol=0, atol=1e-6)
        assert (entries[reused] - entries[full]).abs().max() > 1e-4  # the front blocks did run again


def test_from_the_boundary_on_the_front_blocks_are_cached(flux_mid) -> None:  # type: ignore[no-untyped-def]
    doubles, singles = flux_mid.transformer.transformer_blocks, flux_mid.transformer.single_transformer_blocks
    ran = {"front": 0, "rear": 0}
    handles = [
        doubles[0].ff.register_forward_pre_hook(lambda *a: ran.__setitem__("front", ran["front"] + 1)),
        singles[-1].proj_mlp.register_forward_pre_hook(lambda *a: ran.__setitem__("rear", ran["rear"] + 1)),
    ]
    cache = "{name: delta-dit, interval: 2, boundary: 3, cached_blocks: 4}"
    try:
        ralu_core.accelerate(flux_mid, with_cache("flux-baseline", cache))(
            "a", generator=seeded_generators(0), num_inference_steps=6, **CALL
        )
    finally:
        for handle in handles:
            handle.remove()
    # Steps 0, 2, 4 full; 1 reuses the rear range (before the boundary), 3 and 5 the front one.
    assert ran == {"front": 6 - 2, "rear": 6 - 1}


def test_interval_one_is_the_plain_model_and_batches_equal_singles(flux_mid) -> None:  # type: ignore[no-untyped-def]
    plain = ralu_core.accelerate(flux_mid, "ralu-flux-7x")
    never = ralu_core.accelerate(flux_mid, with_cache("ralu-flux-7x", "{name: delta-dit, interval: 1}"))
    generator = seeded_generators(3)
    torch.testing.assert_close(
        never("a", generator=generator, **CALL).images, plain("a", generator=seeded_generators(3), **CALL).images
    )
    fast = ralu_core.accelerate(flux_mid, with_cache("ralu-flux-7x", "{name: delta-dit, interval: 2, stages: [1, 2]}"))
    prompts = ["a red circle", "a blue square"]
    batch = fast(prompts, generator=seeded_generators(1, 2), **CALL).images
    singles = [fast(p, generator=seeded_generators(s), **CALL).images[0] for p, s in zip(prompts, (1, 2), strict=True)]
    torch.testing.assert_close(batch, torch.stack(singles), rtol=0, atol=2e-5)


def test_the_papers_row_saves_its_tflops_within_ten_percent() -> None:
    from ralu_flux.flops_profile import FluxFlopsProfile

    registry = Registry.collect(create_plugin_manager())
    profile = FluxFlopsProfile.from_source("flux-dev")
    plain = recipe_cost(resolve_recipe(find_recipe("ralu-flux-5x", registry), registry), profile, 1024, 1024)
    cost = recipe_cost(resolve_recipe(find_recipe("ralu-flux-5x-delta-dit", registry), registry), profile, 1024, 1024)
    assert cost.stages[2].step_kinds == ("full", "rear blocks reused") * 3
    saved = plain.total.tflops(False) - cost.total.tflops(False)
    assert saved == pytest.approx(117.91, rel=0.10)
