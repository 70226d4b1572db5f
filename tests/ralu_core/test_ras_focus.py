"""`ras-focus`: RAS's selection by output spread, with starvation prevention that brings dropped tokens back."""

from __future__ import annotations

import pytest
import torch

from ralu_core import accelerate
from ralu_core.errors import ConfigFieldError
from ralu_core.recipes import load_recipe_text
from ralu_core.sampling.tokens import TokenGrid, TokenState, render_latent
from ralu_core.strategies.base import SelectionRequest
from ralu_core.strategies.ras_focus import RASFocusConfig, RASFocusSelector, output_spread
from ralu_core.testing import ToyPipeline, seeded_generators

GRID = TokenGrid(rows=2, cols=4, channels=4, patch=2)


def request(velocity: torch.Tensor, state: TokenState | None = None, seed: int = 0) -> SelectionRequest:
    state = state or TokenState.full_resolution(torch.zeros_like(velocity), GRID)
    everything = torch.arange(state.num_tokens).expand(state.batch_size, -1)
    return SelectionRequest(
        state=state,
        candidates=everything,
        clean_estimate=None,
        velocity=velocity,
        sigma=0.5,
        generator=torch.Generator().manual_seed(seed),
        render=lambda values, level: render_latent(state, values, level),
        decode=lambda latent: latent,
    )


def velocity_with_spreads(spreads: list[float]) -> torch.Tensor:
    """(1, N, C*p*p) velocities whose channel std at every pixel is the given value per token."""
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None].expand(4, 4)  # channel std 1, mean 0
    return torch.stack([s * signs.reshape(-1) for s in spreads])[None]


def test_the_spread_is_the_channel_std_averaged_over_the_tokens_pixels() -> None:
    v = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    expected = v.reshape(2, 8, 4, 4).std(dim=2, unbiased=False).mean(dim=2)
    assert torch.allclose(output_spread(v, 4, 2), expected)
    assert torch.allclose(output_spread(velocity_with_spreads([0.5, 2.0]), 4, 2), torch.tensor([[0.5, 2.0]]))


def test_the_tokens_of_lowest_spread_are_computed() -> None:
    selector = RASFocusSelector(RASFocusConfig(ratio=0.5, starvation=0.0))
    spreads = [3.0, 0.1, 2.0, 0.2, 5.0, 0.3, 4.0, 0.4]
    picks = selector.select(request(velocity_with_spreads(spreads)))
    assert picks.tolist() == [[1, 3, 5, 7]]


def test_starvation_brings_every_token_back_within_a_bounded_number_of_steps() -> None:
    spreads = [3.0, 0.1, 2.0, 0.2, 5.0, 0.3, 4.0, 0.4]
    v = velocity_with_spreads(spreads)
    state = TokenState.full_resolution(torch.zeros_like(v), GRID)

    def first_computed(starvation: float, steps: int = 40) -> dict[int, int]:
        selector = RASFocusSelector(RASFocusConfig(ratio=0.5, starvation=starvation))
        seen: dict[int, int] = {}
        for step in range(steps):
            for token in selector.select(request(v, state, seed=step))[0].tolist():
                seen.setdefault(token, step)
        return seen

    # Without prevention the high-spread tokens are never computed; with it, each one is, and the
    # longest wait is bounded: a token waits until exp(-k D) x its spread falls below the others'.
    assert set(first_computed(0.0)) == {1, 3, 5, 7}
    waits = first_computed(1.0)
    assert set(waits) == set(range(8))
    assert max(waits.values()) <= 8


def test_a_longer_wait_makes_a_token_more_likely_to_be_computed() -> None:
    selector = RASFocusSelector(RASFocusConfig(ratio=0.25, starvation=0.5))
    v = velocity_with_spreads([1.0] * 8)
    state = TokenState.full_resolution(torch.zeros_like(v), GRID)
    first = selector.select(request(v, state, seed=0))[0].tolist()
    priority = selector.priority(request(v, state))[0]
    computed = torch.zeros(8, dtype=torch.bool)
    computed[first] = True
    assert float(priority[~computed].min()) > float(priority[computed].max())  # the dropped ones now rank first


def test_a_new_token_set_starts_with_no_waiting() -> None:
    selector = RASFocusSelector(RASFocusConfig(ratio=0.25, starvation=1.0))
    v = velocity_with_spreads([1.0] * 8)
    selector.select(request(v))
    other = TokenState.full_resolution(torch.zeros(1, 2, 16), TokenGrid(rows=1, cols=2, channels=4, patch=2))
    priority = selector.priority(request(velocity_with_spreads([1.0, 1.0]), other))
    assert torch.equal(priority, -torch.ones(1, 2))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"starvation": -1.0}, "starvation"),
        ({"dense_warmup": 0}, "dense_warmup"),  # was run as 1, while ralu flops counted one sparse step more
        ({"dense_warmup": -2}, "dense_warmup"),
        ({"dense_steps": (4, -1)}, "dense_steps"),
        ({"ratio_end": 7.0}, "ratio_end"),
        ({"ratio_end": -3.0}, "ratio_end"),
        ({"ratio_end": 0.0}, "ratio_end"),
    ],
)
def test_bad_parameters_name_their_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigFieldError) as info:
        RASFocusConfig(**params)
    assert info.value.field == field


RAS_TOY = """
name: toy-ras
schedule: uniform
stages:
  - {level: 0, steps: 6, step_tokens: {name: ras-focus, ratio: 0.5, starvation: 0.1}, inactive: drop}
"""


def test_in_a_recipe_batches_equal_singles(toy_pm) -> None:  # type: ignore[no-untyped-def]
    fast = accelerate(ToyPipeline(), load_recipe_text(RAS_TOY), plugin_manager=toy_pm)
    batch = fast(["a", "b"], height=64, width=96, generator=seeded_generators(1, 2)).images
    singles = [fast(p, height=64, width=96, generator=seeded_generators(s)).images[0] for p, s in (("a", 1), ("b", 2))]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-6)


def test_the_schedule_is_dense_at_warm_up_and_resets_and_sparse_elsewhere() -> None:
    selector = RASFocusSelector(RASFocusConfig(ratio=0.5, dense_warmup=4, dense_steps=(12, 20)))
    counts = selector.step_counts(28, 100)
    assert [j for j, c in enumerate(counts) if c == 100] == [0, 1, 2, 3, 12, 20]
    assert {c for c in counts if c != 100} == {50}
    dynamic = RASFocusSelector(RASFocusConfig(ratio=0.5, ratio_end=0.125, dense_warmup=2)).step_counts(10, 80)
    assert dynamic == (80, 80, 40, 35, 31, 27, 22, 18, 14, 10)  # 0.5 down to 0.125 over the 8 sparse steps
    assert RASFocusSelector(RASFocusConfig(ratio=0.001, dense_warmup=1)).step_counts(3, 10) == (10, 1, 1)


def test_dense_steps_beyond_a_fixed_stage_are_refused_when_the_recipe_loads(toy_pm) -> None:  # type: ignore[no-untyped-def]
    from ralu_core import RecipeError

    text = (
        "name: bad\nschedule: uniform\nstages:\n"
        "  - {level: 0, steps: 10, step_tokens: {name: ras-focus, dense_steps: [12]}}\n"
    )
    with pytest.raises(
        RecipeError, match=r"\$\.stages\[0\]\.step_tokens: dense_steps \[12\] lie beyond this stage's 10 steps"
    ):
        accelerate(ToyPipeline(), load_recipe_text(text), plugin_manager=toy_pm)


def test_a_call_whose_steps_do_not_fit_the_schedule_is_refused_before_the_model_runs(toy_pm, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    from ralu_core import RecipeError

    text = (
        "name: ras-open\nschedule: uniform\nstages:\n"
        "  - {level: 0, step_tokens: {name: ras-focus, dense_steps: [12]}, inactive: drop}\n"
    )
    fast = accelerate(ToyPipeline(), load_recipe_text(text), plugin_manager=toy_pm)
    with pytest.raises(RecipeError, match=r"dense_steps \[12\] lie beyond this stage's 10 steps"):
        fast("a", height=64, width=64, num_inference_steps=10)
    assert toy_plugin.adapter.calls == []  # refused before the call was even prepared
    # The pipeline's default step count (8), known when the call is bound, is checked the same way.
    with pytest.raises(RecipeError, match=r"dense_steps \[12\] lie beyond this stage's 8 steps"):
        fast("a", height=64, width=64)
    assert toy_plugin.adapter.calls == []
    fast("a", height=64, width=64, num_inference_steps=14)  # 14 steps leave room for the reset at 12


def test_the_engine_computes_what_the_schedule_says_at_each_step(toy_pm, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    text = (
        "name: ras-toy\nschedule: uniform\nstages:\n"
        "  - {level: 0, steps: 8, inactive: drop,\n"
        "     step_tokens: {name: ras-focus, ratio: 0.25, dense_warmup: 2, dense_steps: [5]}}\n"
    )
    accelerate(ToyPipeline(), load_recipe_text(text), plugin_manager=toy_pm)("a", height=64, width=64)
    seen = [int(p.shape[1]) for p in toy_plugin.adapter.calls[-1].seen_positions]
    assert seen == [64, 64, 16, 16, 16, 64, 16, 16]


def test_flops_count_each_step_at_its_token_count() -> None:
    from ralu_core.measurement.accounting import recipe_cost
    from ralu_core.plugins import Registry, create_plugin_manager
    from ralu_core.recipes import resolve_recipe
    from ralu_core.testing import ToyPlugin

    plugin = ToyPlugin()
    registry = Registry.collect(create_plugin_manager(plugins=[plugin]))
    text = (
        "name: ras-toy\nschedule: uniform\nstages:\n"
        "  - {level: 0, steps: 6, step_tokens: {name: ras-focus, ratio: 0.5, dense_warmup: 2, dense_steps: [4]}}\n"
    )
    profile = plugin.adapter.flops_profile("toy")
    cost = recipe_cost(resolve_recipe(load_recipe_text(text), registry), profile, 64, 64)
    assert cost.stages[0].step_tokens == (64, 64, 32, 32, 64, 32)
    # Sparse steps attend to all 64 tokens (cached keys and values): linear on 32, attention 32 x 64.
    expected = profile.forward(64) * 3 + profile.forward(32, attended_tokens=64) * 3
    assert cost.stages[0].total == expected
    assert profile.forward(32, attended_tokens=64).attention == 2 * profile.forward(32).attention
    dropped = recipe_cost(
        resolve_recipe(load_recipe_text(text.replace("}}\n", "}, inactive: drop}\n")), registry), profile, 64, 64
    )
    assert dropped.stages[0].total == profile.forward(64) * 3 + profile.forward(32) * 3


def test_the_random_metric_ignores_the_output_and_follows_the_generator() -> None:
    """The ablation control: the same schedule and starvation, random scores from the call's generator."""
    spreads = [3.0, 0.1, 2.0, 0.2, 5.0, 0.3, 4.0, 0.4]

    def picks(seed: int) -> list[list[int]]:
        selector = RASFocusSelector(RASFocusConfig(ratio=0.5, metric="random"))
        return selector.select(request(velocity_with_spreads(spreads), seed=seed)).tolist()  # type: ignore[no-any-return]

    assert picks(0) == picks(0)
    assert {tuple(picks(s)[0]) for s in range(6)} != {(1, 3, 5, 7)}  # not the focus ranking
    assert len({tuple(picks(s)[0]) for s in range(6)}) > 1
    with pytest.raises(ConfigFieldError, match="must be one of output-spread, random, got 'spread'") as failure:
        RASFocusConfig(metric="spread")
    assert failure.value.field == "metric"


def test_computing_the_highest_spread_turns_the_ranking_round_and_keeps_starvation() -> None:
    spreads = [3.0, 0.1, 2.0, 0.2, 5.0, 0.3, 4.0, 0.4]
    selector = RASFocusSelector(RASFocusConfig(ratio=0.5, starvation=1.0, computes="highest"))
    v = velocity_with_spreads(spreads)
    state = TokenState.full_resolution(torch.zeros_like(v), GRID)
    assert selector.select(request(v, state)).tolist() == [[0, 2, 4, 6]]
    # After 3 steps of waiting, exp(3) lifts 0.4 above 5 x exp(0) = 5: the low ones come back.
    for _ in range(2):
        selector.select(request(v, state))
    assert set(selector.select(request(v, state))[0].tolist()) & {1, 3, 5, 7}
