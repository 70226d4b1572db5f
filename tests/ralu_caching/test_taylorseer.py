"""`taylorseer` as published: features inside the blocks forecast by a Taylor series between full steps,
the official code's schedule and finite differences, diffusers' TaylorSeerCache reproduced where the settings
coincide, batch = singles, exact FLOPs of a forecast step, and refusals before any work."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

import ralu_core
from ralu_caching.taylorseer import TaylorSeerCache, TaylorSeerConfig
from ralu_caching.taylorseer_hooks import taylor_value, updated_factors
from ralu_core import RecipeError
from ralu_core.errors import ConfigFieldError, PluginError
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.pipelines.adapter import bind_to_adapter
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.testing import seeded_generators

from .helpers import with_cache

CALL = {"height": 128, "width": 128, "output_type": "latent"}


def test_the_series_is_the_official_finite_difference_update() -> None:
    line = [torch.tensor([2.0 * s + 1.0]) for s in (0, 3, 6)]  # a line in the step index, full every 3 steps
    factors = updated_factors(None, line[0], 0.0, order=2)
    factors = updated_factors(factors, line[1], 3.0, order=2)
    assert [float(f) for f in factors] == [7.0, 2.0]  # value, slope (no second difference yet)
    factors = updated_factors(factors, line[2], 3.0, order=2)
    assert [float(f) for f in factors] == [13.0, 2.0, 0.0]
    assert float(taylor_value(factors, 2.0)) == pytest.approx(2.0 * 8 + 1.0)  # a line is forecast exactly
    # The second factor is the difference of slopes over the distance, and enters with offset**2 / 2.
    bent = updated_factors([torch.tensor([1.0]), torch.tensor([1.0])], torch.tensor([4.0]), 1.0, order=2)
    assert [float(f) for f in bent] == [4.0, 3.0, 2.0]
    assert float(taylor_value(bent, 2.0)) == pytest.approx(4.0 + 3.0 * 2 + 2.0 * 4 / 2)
    # A shape change (a new token set) starts the series again.
    assert len(updated_factors([torch.zeros(2)], torch.ones(3), 1.0, order=1)) == 1


def _diffusers_taylorseer(transformer: Any, interval: int, warmup: int) -> None:
    from diffusers import TaylorSeerCacheConfig

    transformer.enable_cache(
        TaylorSeerCacheConfig(
            cache_interval=interval,
            disable_cache_before_step=warmup,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            cache_identifiers=[
                r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                r"single_transformer_blocks\.\d+\.proj_out",
            ],
            skip_predict_identifiers=[r"single_transformer_blocks\.\d+\.(attn|proj_mlp)"],
        )
    )


def test_it_agrees_with_diffusers_taylorseer_where_the_settings_coincide(flux) -> None:  # type: ignore[no-untyped-def]
    """Interval 2, order 1: both schedules compute at the same steps and both series are the same; the same
    modules forecast (diffusers' identifiers set to the FLUX adapter's block features)."""
    call = {**CALL, "num_inference_steps": 8}
    plain = ralu_core.accelerate(flux, "flux-baseline")("a red circle", generator=seeded_generators(0), **call)
    fast = ralu_core.accelerate(flux, with_cache("flux-baseline", "{name: taylorseer, interval: 2, warmup: 2}"))
    ours = fast("a red circle", generator=seeded_generators(0), **call).images
    _diffusers_taylorseer(flux.transformer, interval=2, warmup=2)
    try:
        theirs = flux("a red circle", generator=seeded_generators(0), **call).images
    finally:
        flux.transformer.disable_cache()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert (ours - plain.images).abs().max() > 1e-3  # it did forecast


def test_forecast_modules_run_only_at_full_steps_and_the_rest_at_every_step(flux) -> None:  # type: ignore[no-untyped-def]
    """Counted inside the modules (a forecast module is still called; its own layers do not run)."""
    double, single = flux.transformer.transformer_blocks[0], flux.transformer.single_transformer_blocks[0]
    watched = {
        "double ff": double.ff.net[-1],
        "double attention": double.attn.to_q,
        "double modulation": double.norm1.linear,
        "single attention": single.attn.to_q,
        "single output": single.proj_out,
    }
    calls = dict.fromkeys(watched, 0)

    def counter(name: str) -> Any:
        return lambda *a: calls.__setitem__(name, calls[name] + 1)

    hooks = [module.register_forward_pre_hook(counter(name)) for name, module in watched.items()]
    recipe = with_cache("ralu-flux-7x", "{name: taylorseer, interval: 2, warmup: 2, stages: [2]}")
    try:
        ralu_core.accelerate(flux, recipe)("a", generator=seeded_generators(0), **CALL)
    finally:
        for hook in hooks:
            hook.remove()
    # Stages of 2, 3 and 5 steps; in stage 2 steps 0, 1 and 3 are full (C C F C F).
    full, every = 2 + 3 + 3, 10
    assert calls == {
        "double ff": full,
        "double attention": full,
        "double modulation": every,
        "single attention": full,
        "single output": every,  # called at every step: at a forecast step the series stands in for it
    }


def test_batch_equals_singles_with_cfg(sd3) -> None:  # type: ignore[no-untyped-def]
    """Every CFG branch keeps its own series, and a forecast for one image depends on that image only."""
    fast = ralu_core.accelerate(
        sd3, with_cache("ralu-sd3-3x", "{name: taylorseer, interval: 2, warmup: 2, stages: [2]}")
    )
    call = {"height": 128, "width": 96, "output_type": "latent"}
    batch = fast(["a red circle", "a blue square"], generator=seeded_generators(1, 2), **call).images
    singles = [
        fast(p, generator=seeded_generators(s), **call).images[0]
        for p, s in (("a red circle", 1), ("a blue square", 2))
    ]
    torch.testing.assert_close(batch, torch.stack(singles), rtol=0, atol=2e-5)
    plain = ralu_core.accelerate(sd3, "ralu-sd3-3x")("a red circle", generator=seeded_generators(1), **call).images
    assert (singles[0] - plain[0]).abs().max() > 1e-4


def test_distance_in_sigma_is_an_option(flux) -> None:  # type: ignore[no-untyped-def]
    runs = {}
    for distance in ("step", "sigma"):
        cache = f"{{name: taylorseer, interval: 2, warmup: 2, distance: {distance}, stages: [2]}}"
        fast = ralu_core.accelerate(flux, with_cache("ralu-flux-7x", cache))
        runs[distance] = fast("a", generator=seeded_generators(0), **CALL).images
    assert (runs["step"] - runs["sigma"]).abs().max() > 1e-6
    with pytest.raises(ConfigFieldError, match="must be one of step, sigma"):
        TaylorSeerConfig(distance="time")


PAPER_SAVED = {"ralu-flux-5x-taylorseer": 129.77, "ralu-flux-5x-taylorseer-fast": 209.09}
"""TFLOPs the RALU paper's TaylorSeer rows save from RALU 5x (v3, Table 2; attention not counted)."""


@pytest.mark.parametrize("recipe", sorted(PAPER_SAVED))
def test_the_papers_rows_save_its_tflops_within_ten_percent(recipe: str) -> None:
    from ralu_flux.adapter import FluxAdapter
    from ralu_flux.flops_profile import FluxFlopsProfile

    registry = Registry.collect(create_plugin_manager())
    profile = FluxFlopsProfile.from_source("flux-dev")
    plain = recipe_cost(resolve_recipe(find_recipe("ralu-flux-5x", registry), registry), profile, 1024, 1024)
    runtime = resolve_recipe(find_recipe(recipe, registry), registry)
    bind_to_adapter(FluxAdapter(), runtime)
    cost = recipe_cost(runtime, profile, 1024, 1024)
    saved = plain.total.tflops(False) - cost.total.tflops(False)
    assert saved == pytest.approx(PAPER_SAVED[recipe], rel=0.10)
    # A forecast step still runs the embeddings, modulation and output layers: it costs more than nothing...
    stage = cost.stages[2]
    kinds = dict(zip(stage.step_kinds, (step.tflops(False) for step in stage.step_costs), strict=True))
    full, forecast = kinds["full"], kinds["forecast from features"]
    assert 0 < forecast < full / 100  # ...and far less than a full step (FLUX's weights are in the branches)


def test_an_adapter_that_does_not_declare_its_blocks_is_refused(sd3) -> None:  # type: ignore[no-untyped-def]
    from ralu_caching.unet import UNetAdapter
    from ralu_core.pipelines.adapter import adapter_problems

    registry = Registry.collect(create_plugin_manager())
    runtime = resolve_recipe(with_cache("sd3-baseline", "taylorseer"), registry)
    problems = adapter_problems(UNetAdapter(), runtime)
    assert any("the 'unet' adapter does not declare its blocks' features" in p for p in problems)
    # A block class the adapter did not declare is refused when the cache attaches, before any model runs.
    cache = TaylorSeerCache(TaylorSeerConfig())

    class Facts:
        name = "other"
        last_block_returns_text = True
        block_features: ClassVar[dict[str, None]] = {"SomeOtherBlock": None}

    cache.use_model(Facts())  # type: ignore[arg-type]
    attached = cache.attach(sd3.transformer)
    with pytest.raises(ValueError, match="does not know what to forecast in JointTransformerBlock blocks"):
        attached.__enter__()


def test_an_unbound_cache_says_so() -> None:
    with pytest.raises(RuntimeError, match="was not told its adapter"):
        TaylorSeerCache(TaylorSeerConfig()).attach(None)


def test_it_is_refused_in_a_stage_with_step_tokens() -> None:
    registry = Registry.collect(create_plugin_manager())
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]: 'taylorseer' reuses block features"):
        resolve_recipe(with_cache("ralu-ras-flux-7x", "taylorseer"), registry)


def test_a_failure_at_attach_is_the_plugins_error(flux) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(flux, with_cache("flux-baseline", "taylorseer"))
    fast.runtime.caches[0].cache.use_model(type("F", (), {"block_features": {}, "name": "x"})())  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="cannot attach to FluxTransformer2DModel"):
        fast("a", generator=seeded_generators(0), **CALL)
