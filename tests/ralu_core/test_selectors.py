"""Token selectors: the Canny and gradient selectors find a synthetic edge; random is per image."""

from __future__ import annotations

import pytest
import torch

from ralu_core.strategies.selectors import (
    AllSelector,
    CannyEdgeSelector,
    LatentGradientSelector,
    RandomSelector,
    top_count,
)
from ralu_core.testing import TokenSelectorContract, half_resolution_request
from ralu_core.testing import seeded_generators as generators


def edge_latent(batch: int = 1) -> torch.Tensor:
    """A half-res latent (8 x 8 pixels = 4 x 4 tokens of 2 x 2) with a vertical step inside token column 1."""
    latent = torch.full((batch, 4, 8, 8), -2.0)
    latent[:, :, :, 3:] = 2.0  # the step lies between latent columns 2 and 3, both in token column 1
    return latent


def token_columns(request, picks: torch.Tensor) -> set[int]:  # type: ignore[no-untyped-def]
    chosen = torch.gather(request.candidates, 1, picks)
    cells = request.state.cells[0, chosen[0]]
    return {int(c) // 2 for c in cells[:, 1]}


@pytest.mark.parametrize(
    "selector",
    [
        CannyEdgeSelector(CannyEdgeSelector.Config(ratio=0.25)),
        LatentGradientSelector(LatentGradientSelector.Config(ratio=0.25)),
    ],
)
def test_edge_selectors_pick_the_tokens_under_the_edge(selector) -> None:  # type: ignore[no-untyped-def]
    request = half_resolution_request(edge_latent())
    picks = selector.select(request)
    assert picks.shape == (1, 4)
    assert token_columns(request, picks) == {1}


def test_canny_edge_map_marks_the_step() -> None:
    images = torch.zeros(1, 3, 16, 16)
    images[:, :, :, 8:] = 1.0
    edges = CannyEdgeSelector().edge_map(images)
    columns = set(edges[0].nonzero()[:, 1].tolist())
    assert columns and columns <= {7, 8}


def test_canny_selection_is_per_image() -> None:
    latent = edge_latent(2)
    latent[1] = latent[1].transpose(1, 2).clone()  # second image: a horizontal edge in token row 1
    request = half_resolution_request(latent)
    picks = CannyEdgeSelector(CannyEdgeSelector.Config(ratio=0.25)).select(request)
    rows_second = {int(r) // 2 for r in request.state.cells[1, torch.gather(request.candidates, 1, picks)[1], 0]}
    assert token_columns(request, picks) == {1} and rows_second == {1}


def test_random_selection_follows_each_images_generator() -> None:
    latent = torch.zeros(2, 4, 8, 8)
    selector = RandomSelector(RandomSelector.Config(ratio=0.5))
    batch = selector.select(half_resolution_request(latent, generator=generators(1, 2)))
    first = selector.select(half_resolution_request(latent[:1], generator=generators(1)))
    second = selector.select(half_resolution_request(latent[:1], generator=generators(2)))
    assert torch.equal(batch, torch.cat([first, second]))
    assert not torch.equal(first, second)


def test_all_selects_every_candidate() -> None:
    request = half_resolution_request(torch.zeros(2, 4, 8, 8))
    picks = AllSelector().select(request)
    assert picks.tolist() == [list(range(16))] * 2


def test_top_count_breaks_ties_by_position_and_sorts() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert top_count(scores, 2).tolist() == [[1, 2]]


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_ratio_out_of_range_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        CannyEdgeSelector.Config(ratio=ratio)


def test_canny_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="low_threshold"):
        CannyEdgeSelector.Config(low_threshold=250, high_threshold=200)


class TestCannyContract(TokenSelectorContract):
    def make_selector(self) -> CannyEdgeSelector:
        return CannyEdgeSelector(CannyEdgeSelector.Config(ratio=0.3))


class TestLatentGradientContract(TokenSelectorContract):
    def make_selector(self) -> LatentGradientSelector:
        return LatentGradientSelector()


class TestRandomContract(TokenSelectorContract):
    def make_selector(self) -> RandomSelector:
        return RandomSelector(RandomSelector.Config(ratio=0.2))


class TestAllContract(TokenSelectorContract):
    def make_selector(self) -> AllSelector:
        return AllSelector()
