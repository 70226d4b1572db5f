"""`ras-focus`: RAS's selection by output spread, with starvation prevention that brings dropped tokens back."""

from __future__ import annotations

import pytest
import torch

from ralu_core import accelerate
from ralu_core.errors import ConfigFieldError
from ralu_core.recipes import load_recipe_text
from ralu_core.strategies.base import SelectionRequest
from ralu_core.strategies.ras_focus import RASFocusConfig, RASFocusSelector, output_spread
from ralu_core.testing import ToyPipeline, seeded_generators
from ralu_core.tokens import TokenGrid, TokenState, render_latent

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
    scores = selector.scores(request(v, state))[0]
    computed = torch.zeros(8, dtype=torch.bool)
    computed[first] = True
    assert float(scores[~computed].max()) < float(scores[computed].min())  # the dropped ones now rank first


def test_a_new_token_set_starts_with_no_waiting() -> None:
    selector = RASFocusSelector(RASFocusConfig(ratio=0.25, starvation=1.0))
    v = velocity_with_spreads([1.0] * 8)
    selector.select(request(v))
    other = TokenState.full_resolution(torch.zeros(1, 2, 16), TokenGrid(rows=1, cols=2, channels=4, patch=2))
    scores = selector.scores(request(velocity_with_spreads([1.0, 1.0]), other))
    assert torch.equal(scores, torch.ones(1, 2))


@pytest.mark.parametrize(
    ("params", "field"), [({"ratio": 0.0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"starvation": -1.0}, "starvation")]
)
def test_bad_parameters_name_their_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigFieldError) as info:
        RASFocusConfig(**params)
    assert info.value.field == field


RAS_TOY = """
name: toy-ras
schedule: uniform
stages:
  - {level: 0, steps: 6, step_tokens: {name: ras-focus, ratio: 0.5, starvation: 0.1}}
"""


def test_in_a_recipe_batches_equal_singles(toy_pm) -> None:  # type: ignore[no-untyped-def]
    fast = accelerate(ToyPipeline(), load_recipe_text(RAS_TOY), plugin_manager=toy_pm)
    batch = fast(["a", "b"], height=64, width=96, generator=seeded_generators(1, 2)).images
    singles = [fast(p, height=64, width=96, generator=seeded_generators(s)).images[0] for p, s in (("a", 1), ("b", 2))]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-6)
