"""Token selectors: the Canny and gradient selectors find synthetic edges whatever their contrast, fill
up by gradient where edges run out, and leave ties to the call's generator; random is per image."""

from __future__ import annotations

import attrs
import pytest
import torch

from ralu_core.errors import PluginError
from ralu_core.sampling.engine import select_with
from ralu_core.strategies.base import SelectionRequest
from ralu_core.strategies.selectors import (
    AllSelector,
    CannyEdgeSelector,
    LatentGradientSelector,
    RandomSelector,
    RatioSelector,
    rank_top,
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


def test_rank_top_orders_by_keys_lexicographically_and_sorts() -> None:
    first = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    second = torch.tensor([[9.0, 0.0, 1.0, 9.0, 2.0]])  # only breaks the ties of the first key
    assert rank_top([first, second], 2, generators(0)).tolist() == [[2, 4]]
    assert rank_top([first, second], 4, generators(0)).tolist() == [[0, 1, 2, 4]]


def test_rank_top_leaves_remaining_ties_to_the_generator() -> None:
    tied = torch.zeros(1, 64)
    picks = {tuple(rank_top([tied], 8, generators(seed))[0].tolist()) for seed in range(6)}
    assert len(picks) == 6  # every seed draws another set
    assert rank_top([tied], 8, generators(3)).tolist() == rank_top([tied], 8, generators(3)).tolist()
    # Over many draws every position is taken about equally often: no place in the grid is favoured.
    counts = torch.zeros(64)
    for seed in range(400):
        counts[rank_top([tied], 8, generators(seed))[0]] += 1
    assert counts.min() > 25 and counts.max() < 75  # expected 50 each


def with_decoded(request: SelectionRequest, transform) -> SelectionRequest:  # type: ignore[no-untyped-def]
    """The same request, but `decode` passes the decoded image through `transform` (contrast, brightness)."""
    decode = request.decode
    return attrs.evolve(request, decode=lambda latent: transform(decode(latent)))


def token_set(request: SelectionRequest, picks: torch.Tensor, image: int = 0) -> set[tuple[int, int]]:
    """The selected tokens as (row, col) of the half-resolution token grid."""
    chosen = torch.gather(request.candidates, 1, picks)[image]
    return {(int(r) // 2, int(c) // 2) for r, c in request.state.cells[image, chosen].tolist()}


def square_ring_latent(low: float, high: float) -> torch.Tensor:
    """A 16 x 16 half-res latent (8 x 8 tokens of 2 x 2) holding a square whose sides run through the
    middle of token rows/columns 1 and 6: exactly the 20 tokens of that ring carry its edges."""
    latent = torch.full((1, 4, 16, 16), low)
    latent[:, :, 3:13, 3:13] = high
    return latent


RING = {(r, c) for r in range(1, 7) for c in range(1, 7) if r in (1, 6) or c in (1, 6)}


@pytest.mark.parametrize("contrast", [4.0, 0.1, 0.04])
def test_canny_selects_every_edge_token_of_a_low_contrast_shape(contrast: float) -> None:
    """The toy decoder is sigmoid(2x): a square at +-0.02 decodes to grey 0.49 / 0.51, a 5-level step
    in 8 bits, which the paper's fixed thresholds on the raw image never call an edge."""
    request = half_resolution_request(square_ring_latent(-contrast / 2, contrast / 2))
    selector = CannyEdgeSelector(CannyEdgeSelector.Config(ratio=20 / 64))
    assert token_set(request, selector.select(request)) == RING


def test_canny_fills_up_with_edge_adjacent_tokens_before_flat_ones() -> None:
    """A step on a token boundary: Canny marks one side of it, the Sobel gradient both. Asked for two
    columns' worth, the selector takes both columns at the step and no token of the flat regions."""
    latent = torch.full((1, 4, 16, 16), -1.0)
    latent[:, :, :, 8:] = 1.0  # the step lies between token columns 3 and 4
    request = half_resolution_request(latent)
    picks = CannyEdgeSelector(CannyEdgeSelector.Config(ratio=16 / 64)).select(request)
    assert {col for _, col in token_set(request, picks)} == {3, 4}


def test_canny_ranks_weak_edges_above_flat_regions() -> None:
    """A strong step and, far from it, a weak one that Canny's hysteresis drops: the weak edge's tokens
    come right after the strong edge's, before any flat token."""
    latent = torch.full((1, 4, 16, 16), -2.0)
    latent[:, :, :, 3:] = 2.0  # strong step inside token column 1
    latent[:, :, :, 11:] = 1.9  # weak step inside token column 5
    request = half_resolution_request(latent)
    selector = CannyEdgeSelector(CannyEdgeSelector.Config(ratio=16 / 64))
    assert int(selector.ranking(request)[0].reshape(8, 8)[:, 5].sum()) == 0  # no Canny edge pixel there
    assert {col for _, col in token_set(request, selector.select(request))} == {1, 5}


@pytest.mark.parametrize(
    "transform",
    [lambda rgb: 0.5 + (rgb - 0.5) / 2, lambda rgb: rgb / 2 + 0.3, lambda rgb: rgb / 5],
    ids=["half-contrast", "shifted-brightness", "dim"],
)
def test_canny_selection_does_not_depend_on_contrast_or_brightness(transform) -> None:  # type: ignore[no-untyped-def]
    """Three shapes of different contrast on a grey background: scaling the decoded image's contrast or
    shifting its brightness changes neither the edge tokens nor the order of the rest."""
    latent = torch.zeros(2, 4, 16, 16)
    latent[:, :, 2:7, 2:9] = 0.7
    latent[:, :, 9:14, 3:6] = -0.5
    latent[:, :, 10:15, 9:15] = 0.3
    latent[1] = latent[1].flip(-1)
    selector = CannyEdgeSelector(CannyEdgeSelector.Config(ratio=0.4))
    request = half_resolution_request(latent, generator=generators(3, 4))
    changed = with_decoded(request, transform)
    assert torch.equal(selector.select(request), selector.select(changed))


def test_canny_without_stretch_keeps_the_papers_literal_thresholds() -> None:
    """`stretch: false` is the paper's pipeline as written: the low-contrast square has no edges."""
    request = half_resolution_request(square_ring_latent(-0.02, 0.02))
    literal = CannyEdgeSelector(CannyEdgeSelector.Config(stretch=False))
    assert float(literal.ranking(request)[0].sum()) == 0.0
    assert float(CannyEdgeSelector().ranking(request)[0].sum()) > 0.0


@pytest.mark.parametrize("selector", [CannyEdgeSelector(), LatentGradientSelector()], ids=["canny", "gradient"])
def test_edge_selectors_draw_a_flat_image_from_the_generator(selector) -> None:  # type: ignore[no-untyped-def]
    """Nothing to rank on a flat image: the choice is the generator's, not the first rows of the grid."""
    flat = torch.full((1, 4, 16, 16), 0.3)
    first = selector.select(half_resolution_request(flat, generator=generators(0)))
    again = selector.select(half_resolution_request(flat, generator=generators(0)))
    other = selector.select(half_resolution_request(flat, generator=generators(1)))
    count = selector.planned_count(64)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first[0].tolist() != list(range(count))
    rows = {int(r) // 2 for r in half_resolution_request(flat).state.cells[0, first[0], 0]}
    assert len(rows) > 4  # spread over the grid, not packed into the top rows


def test_latent_gradient_breaks_ties_of_equal_edges_by_generator() -> None:
    """A vertical step gives every token of its column the same gradient; asked for half of them, the
    generator picks which half, and the other columns stay unpicked."""
    latent = torch.full((1, 4, 16, 16), -1.0)
    latent[:, :, :, 3:] = 1.0
    selector = LatentGradientSelector(LatentGradientSelector.Config(ratio=4 / 64))
    requests = [half_resolution_request(latent, generator=generators(seed)) for seed in range(4)]
    picked = [token_set(r, selector.select(r)) for r in requests]
    assert all({col for _, col in tokens} == {1} for tokens in picked)
    assert len({frozenset(tokens) for tokens in picked}) > 1


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


class ShortScores(RatioSelector):
    """A plugin author's slip: one score too few (the last candidate could never be chosen)."""

    name = "short-scores"

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        return torch.ones(request.candidates.shape[0], request.candidates.shape[1] - 1)


def test_scores_one_column_short_stop_the_engine_naming_the_selector() -> None:
    selector = ShortScores(ShortScores.Config(ratio=0.25))
    request = half_resolution_request(edge_latent(2), generator=generators(0, 1))
    with pytest.raises(
        PluginError,
        match=r"token selector 'short-scores': scores has shape \(2, 15\), expected \(2, 16\): one score per candidate",
    ):
        select_with(selector, request)


def test_scores_one_column_short_fail_the_contract() -> None:
    class Contract(TokenSelectorContract):
        def make_selector(self) -> ShortScores:
            return ShortScores(ShortScores.Config(ratio=0.25))

    with pytest.raises((AssertionError, PluginError)):
        Contract().test_scores_one_per_candidate()
    with pytest.raises(PluginError):
        Contract().test_returns_planned_count_of_distinct_candidates()


def test_a_ranking_of_the_wrong_kind_is_refused() -> None:
    class NoTuple(ShortScores):
        def ranking(self, request: SelectionRequest) -> tuple[torch.Tensor, ...]:
            return torch.ones(request.candidates.shape)  # type: ignore[return-value]

    request = half_resolution_request(edge_latent(1), generator=generators(0))
    with pytest.raises(PluginError, match="ranking must return a tuple of"):
        select_with(NoTuple(NoTuple.Config(ratio=0.25)), request)
