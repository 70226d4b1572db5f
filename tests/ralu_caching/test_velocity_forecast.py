"""`velocity-forecast` (the control for TaylorSeer): exact polynomial forecasts in sigma, a fixed schedule per
stage, counted FLOPs."""

from __future__ import annotations

import pytest
import torch

import ralu_core
from ralu_caching.forecast_schedule import computes
from ralu_caching.velocity_forecast import VelocityForecastCache, VelocityForecastConfig, newton_forecast
from ralu_core import RecipeError
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.strategies.base import StageInfo, StepInfo
from ralu_core.testing import seeded_generators

from .helpers import with_cache


def test_forecasts_reproduce_polynomials_of_their_order_exactly() -> None:
    sigmas = [0.5, 0.7, 0.95]
    line = [torch.tensor([2 * s + 1.0]) for s in sigmas]
    parabola = [torch.tensor([3 * s * s - s + 0.25]) for s in sigmas]
    assert float(newton_forecast(sigmas[:2], line[:2], 0.2)) == pytest.approx(1.4)
    assert float(newton_forecast(sigmas, parabola, 0.2)) == pytest.approx(3 * 0.04 - 0.2 + 0.25)
    # A line through two points does not reproduce a parabola: the order matters.
    assert float(newton_forecast(sigmas[:2], parabola[:2], 0.2)) != pytest.approx(3 * 0.04 - 0.2 + 0.25)


def test_the_schedule_warms_up_then_computes_once_per_interval() -> None:
    assert [computes(j, warmup=2, interval=2) for j in range(7)] == [True, True, False, True, False, True, False]
    assert [computes(j, warmup=3, interval=3) for j in range(9)] == [True] * 3 + [False, False, True] * 2
    assert all(computes(j, warmup=2, interval=1) for j in range(10))


def test_the_cache_computes_on_schedule_and_forecasts_in_between() -> None:
    cache = VelocityForecastCache(VelocityForecastConfig(interval=2, order=1, warmup=2))
    sigmas = [1.0, 0.8, 0.6, 0.4, 0.2]
    calls: list[int] = []

    def velocity(sigma: float) -> torch.Tensor:
        return torch.full((1, 3, 2), 5.0 - 2.0 * sigma)  # linear in sigma: forecasts are exact

    for stage in range(2):
        cache.begin_stage(StageInfo(index=stage, num_tokens=3, steps=4))
        for step in range(4):
            info = StepInfo(
                stage=stage, step=step, sigma=sigmas[step], sigma_next=sigmas[step + 1], active=None, steps=4
            )
            out = cache.predict(info, lambda s=sigmas[step], k=step: calls.append(k) or velocity(s))
            assert torch.allclose(out, velocity(sigmas[step]))
    # Each stage starts over: its first two steps compute, then every other one.
    assert calls == [0, 1, 3, 0, 1, 3]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"interval": 0}, "interval"), ({"order": 3}, "order"), ({"order": 2, "warmup": 2}, "warmup")],
)
def test_bad_parameters_name_their_field(params: dict[str, int], field: str) -> None:
    from ralu_core.errors import ConfigFieldError

    with pytest.raises(ConfigFieldError) as info:
        VelocityForecastConfig(**params)
    assert info.value.field == field


def test_a_bad_recipe_entry_is_refused_with_its_path(flux) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]\.order: must be 0, 1 or 2"):
        ralu_core.accelerate(flux, with_cache("ralu-flux-7x", "{name: velocity-forecast, order: 5}"))


def test_flux_7x_with_the_velocity_forecast_reaches_nine_times_fewer_flops() -> None:
    from ralu_flux.flops_profile import FluxFlopsProfile

    registry = Registry.collect(create_plugin_manager())
    profile = FluxFlopsProfile.from_source("flux-dev")
    plain = recipe_cost(resolve_recipe(find_recipe("ralu-flux-7x", registry), registry), profile, 1024, 1024)
    cost = recipe_cost(
        resolve_recipe(
            with_cache("ralu-flux-7x", "{name: velocity-forecast, interval: 2, order: 1, warmup: 2, stages: [2]}"),
            registry,
        ),
        profile,
        1024,
        1024,
    )
    assert cost.stages[2].step_kinds == ("full", "full", "forecast", "full", "forecast")
    # Two of stage 3's five forwards are forecast: exactly 2/5 of that stage is saved.
    saved = plain.stages[2].total.tflops(False) - cost.stages[2].total.tflops(False)
    assert saved == pytest.approx(plain.stages[2].total.tflops(False) * 2 / 5)
    assert cost.speedup(include_attention=False) >= 9.0
    assert cost.speedup(include_attention=True) >= 9.0


def test_batch_equals_singles_under_ralu(flux) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(
        flux, with_cache("ralu-flux-7x", "{name: velocity-forecast, interval: 2, order: 1, warmup: 2, stages: [2]}")
    )
    call = {"height": 128, "width": 128, "output_type": "latent"}
    batch = fast(["a red circle", "a blue square"], generator=seeded_generators(1, 2), **call).images
    singles = [
        fast(p, generator=seeded_generators(s), **call).images[0]
        for p, s in (("a red circle", 1), ("a blue square", 2))
    ]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-5)


def test_the_model_runs_only_on_planned_steps(sd3) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    handle = sd3.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        ralu_core.accelerate(
            sd3, with_cache("ralu-sd3-3x", "{name: velocity-forecast, interval: 2, order: 1, warmup: 2, stages: [2]}")
        )("a", height=128, width=96, output_type="latent")
    finally:
        handle.remove()
    assert len(calls) == 3 + 3 + 4  # stage 3's six steps: C C F C F C


def test_a_warm_up_that_leaves_nothing_to_forecast_in_a_stage_is_refused_when_the_recipe_resolves() -> None:
    """It was accepted without a word, and the cache computed every step of such a stage."""
    registry = Registry.collect(create_plugin_manager())
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]: a warm-up of 5 .* stage\(s\) 2 \(5 steps\), so it"):
        resolve_recipe(with_cache("ralu-flux-7x", "{name: velocity-forecast, warmup: 5, stages: [2]}"), registry)
    with pytest.raises(RecipeError, match=r"stage\(s\) 0 \(2 steps\), 1 \(3 steps\), 2 \(5 steps\).*longer stages"):
        resolve_recipe(with_cache("ralu-flux-7x", "{name: velocity-forecast, warmup: 6}"), registry)
    # Longer than some of its stages only: those are named, with the stages where it would work.
    with pytest.raises(RecipeError, match=r"stage\(s\) 0 \(2 steps\), 1 \(3 steps\).*`stages: \[2\]`"):
        resolve_recipe(with_cache("ralu-flux-7x", "{name: velocity-forecast, warmup: 3}"), registry)
    resolve_recipe(with_cache("ralu-flux-7x", "{name: velocity-forecast, warmup: 3, stages: [2]}"), registry)


def test_a_warm_up_as_long_as_the_calls_steps_is_refused_before_the_model_runs(sd3) -> None:  # type: ignore[no-untyped-def]
    """A single-stage recipe takes its step count from the call, so the check waits for the call."""
    calls: list[int] = []
    handle = sd3.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    fast = ralu_core.accelerate(sd3, with_cache("sd3-baseline", "{name: velocity-forecast, warmup: 3}"))
    try:
        with pytest.raises(RecipeError, match=r"stage\(s\) 0 \(3 steps\)"):
            fast("a", height=64, width=64, num_inference_steps=3, output_type="latent")
    finally:
        handle.remove()
    assert calls == []
