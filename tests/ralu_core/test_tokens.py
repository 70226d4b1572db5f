"""Token state geometry: pixel-nearest upsampling, its adjoint, positions per stage, orderings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ralu_core.sampling.tokens import (
    FULL,
    HALF,
    TokenGrid,
    TokenState,
    child_cells,
    downsample_nearest,
    image_to_tokens,
    nearest_children,
    render_latent,
    sum_over_copies,
    to_raster,
    tokens_to_image,
    upsample_selected,
)

GRID = TokenGrid(rows=6, cols=8, channels=3, patch=2)


def random_full_state(batch: int = 2, grid: TokenGrid = GRID, seed: int = 0) -> TokenState:
    gen = torch.Generator().manual_seed(seed)
    return TokenState.full_resolution(torch.randn(batch, grid.num_tokens, grid.token_dim, generator=gen), grid)


def test_tokens_image_round_trip() -> None:
    state = random_full_state()
    image = tokens_to_image(state.values, GRID.rows, GRID.cols, GRID.channels, GRID.patch)
    assert image.shape == (2, 3, 12, 16)
    assert torch.equal(image_to_tokens(image, GRID.patch), state.values)


def test_downsample_takes_every_second_latent_pixel() -> None:
    state = random_full_state()
    low = downsample_nearest(state)
    image = tokens_to_image(state.values, GRID.rows, GRID.cols, GRID.channels, GRID.patch)
    expected = image_to_tokens(image[:, :, ::2, ::2], GRID.patch)
    assert torch.equal(low.values, expected)
    assert bool((low.levels == HALF).all())
    assert low.cells[0, 1].tolist() == [0, 2]


def test_upsampling_everything_is_pixel_nearest_interpolation() -> None:
    low = downsample_nearest(random_full_state())
    everything = torch.arange(low.num_tokens).expand(2, -1)
    up = to_raster(upsample_selected(low, everything).state)
    low_image = render_latent(low, level=HALF)
    expected = F.interpolate(low_image, scale_factor=2, mode="nearest")
    assert torch.equal(tokens_to_image(up.values, GRID.rows, GRID.cols, GRID.channels, GRID.patch), expected)


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_sum_over_copies_is_the_adjoint_of_upsampling(patch: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3 * patch * patch, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 20, 3 * patch * patch, generator=gen, dtype=torch.float64)
    lhs = (nearest_children(x, 3, patch) * y).sum()
    rhs = (x * sum_over_copies(y, 3, patch)).sum()
    assert torch.allclose(lhs, rhs)
    assert torch.allclose(sum_over_copies(nearest_children(x, 3, patch), 3, patch), 4 * x)


def test_raster_round_trip_after_shuffling() -> None:
    state = random_full_state()
    perm = torch.stack([torch.randperm(GRID.num_tokens, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    shuffled = TokenState(
        values=torch.gather(state.values, 1, perm[..., None].expand(-1, -1, GRID.token_dim)),
        cells=torch.gather(state.cells, 1, perm[..., None].expand(-1, -1, 2)),
        levels=state.levels.clone(),
        grid=GRID,
    )
    restored = to_raster(shuffled)
    assert torch.equal(restored.values, state.values)
    assert torch.equal(restored.cells, state.cells)


def test_raster_refuses_incomplete_cover() -> None:
    low = downsample_nearest(random_full_state())
    with pytest.raises(ValueError, match="full resolution"):
        to_raster(low)
    state = random_full_state()
    state.cells[0, 0] = state.cells[0, 1]
    with pytest.raises(ValueError, match="exactly once"):
        to_raster(state)


def test_positions_in_each_stage() -> None:
    low = downsample_nearest(random_full_state(batch=1))
    pos1 = low.positions()[0]
    assert pos1[:4].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]
    assert bool((pos1 == pos1.round()).all())
    split = upsample_selected(low, torch.tensor([[5]]))
    mixed = split.state.positions()[0]
    parent = low.positions()[0, 5].tolist()
    assert parent == [1.0, 1.0]
    children = mixed[split.children[0]].tolist()
    assert children == [[1.0, 1.0], [1.0, 1.5], [1.5, 1.0], [1.5, 1.5]]
    kept = mixed[split.kept[0]]
    assert bool((kept == kept.round()).all()) and kept.shape[0] == low.num_tokens - 1
    rest = split.state.indices_at_level(HALF)
    final = upsample_selected(split.state, rest).state
    assert final.coarsest_level == FULL
    assert sorted(map(tuple, final.positions()[0].tolist())) == sorted(
        map(tuple, GRID.raster_cells().double().tolist())
    )


def test_upsample_rejects_bad_selections() -> None:
    low = downsample_nearest(random_full_state(batch=1))
    with pytest.raises(ValueError, match="distinct"):
        upsample_selected(low, torch.tensor([[1, 1]]))
    up = upsample_selected(low, torch.tensor([[0]])).state
    with pytest.raises(ValueError, match="half-resolution"):
        upsample_selected(up, torch.tensor([[up.num_tokens - 1]]))


def test_render_half_reproduces_half_tokens_and_pools_full_ones() -> None:
    low = downsample_nearest(random_full_state())
    latent = render_latent(low, level=HALF)
    assert torch.equal(image_to_tokens(latent, GRID.patch), low.values)
    split = upsample_selected(low, torch.tensor([[0, 3], [1, 2]]))
    assert torch.allclose(render_latent(split.state, level=HALF), latent)


def test_child_cells_order_matches_nearest_children() -> None:
    cells = torch.tensor([[[2, 4]]])
    assert child_cells(cells)[0].tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]
    x = torch.arange(4.0).reshape(1, 1, 4)  # one channel, patch 2: pixels a b / c d
    kids = nearest_children(x, 1, 2)[0]
    assert kids.tolist() == [[0.0] * 4, [1.0] * 4, [2.0] * 4, [3.0] * 4]
