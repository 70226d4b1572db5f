"""Token maps: which new token came from which old one, derived from footprints."""

from __future__ import annotations

import pytest
import torch

from ralu_core.sampling.token_map import TokenMap, footprint_owner
from ralu_core.sampling.tokens import TokenGrid, TokenState, downsample_nearest, to_raster, upsample_selected

GRID = TokenGrid(rows=4, cols=6, channels=2, patch=2)


def half_state(batch: int = 2) -> TokenState:
    values = torch.randn(batch, GRID.num_tokens, GRID.token_dim, generator=torch.Generator().manual_seed(0))
    return downsample_nearest(TokenState.full_resolution(values, GRID))


def test_children_map_to_their_parent_and_the_rest_are_kept() -> None:
    old = half_state()
    selected = torch.tensor([[0, 4], [5, 1]])
    new = upsample_selected(old, selected).state
    token_map = TokenMap.between(old, new)
    for image in range(2):
        parents = token_map.parent[image]
        kept = token_map.kept[image]
        assert int(kept.sum()) == 4 and int((~kept).sum()) == 8
        # Each selected parent has exactly its four children, and each child lies inside its parent.
        assert sorted(parents[~kept].tolist()) == sorted(selected[image].tolist() * 4)
        child_cells = new.cells[image][~kept]
        parent_cells = old.cells[image][parents[~kept]]
        assert bool(((child_cells - parent_cells >= 0) & (child_cells - parent_cells < 2)).all())
        # Kept tokens are the unselected ones, at the same cell.
        assert torch.equal(new.cells[image][kept], old.cells[image][parents[kept]])


def test_a_reordering_keeps_every_token() -> None:
    old = upsample_selected(half_state(), torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])).state
    new = to_raster(old)
    token_map = TokenMap.between(old, new)
    assert token_map.all_kept
    assert torch.equal(token_map.carry(old.values), new.values)


def test_carry_gives_each_new_token_its_parents_data() -> None:
    old = half_state(batch=1)
    new = upsample_selected(old, torch.tensor([[2]])).state
    per_token = torch.arange(old.num_tokens, dtype=torch.float32)[None, :, None]
    carried = TokenMap.between(old, new).carry(per_token)
    assert carried.shape == (1, new.num_tokens, 1)
    assert carried[0, -4:, 0].tolist() == [2.0] * 4


def test_every_cell_has_exactly_one_owner() -> None:
    state = upsample_selected(half_state(), torch.tensor([[0, 3], [1, 2]])).state
    owner = footprint_owner(state)
    assert bool((owner >= 0).all())
    counts = torch.stack([torch.bincount(o, minlength=state.num_tokens) for o in owner])
    assert torch.equal(counts, torch.where(state.levels == 1, 4, 1))


def test_states_of_different_grids_are_refused() -> None:
    other = TokenState.full_resolution(torch.zeros(2, 6, 8), TokenGrid(rows=2, cols=3, channels=2, patch=2))
    with pytest.raises(ValueError, match="same grid and batch"):
        TokenMap.between(half_state(), other)
