"""Which token of a new state came from which token of the old one.

A transition replaces half-resolution tokens by their four children and may reorder the rest; a
cache that keeps something per token (a velocity history, keys and values) must either carry it
over or start again. The map is derived from the two states' footprints, so it is exact for any
transition, built-in or third-party, and no plugin can report it wrongly.
"""

from __future__ import annotations

import attrs
import torch

from ralu_core.sampling.tokens import TokenState, gather_tokens


@attrs.frozen(kw_only=True)
class TokenMap:
    """parent[b, n]: the old token whose footprint contains new token n of image b.
    kept[b, n]: new token n is its parent unchanged (same footprint, same level), only moved."""

    parent: torch.Tensor
    kept: torch.Tensor

    @classmethod
    def between(cls, old: TokenState, new: TokenState) -> TokenMap:
        if old.grid != new.grid or old.batch_size != new.batch_size:
            raise ValueError("a token map relates two states of the same grid and batch")
        owner = footprint_owner(old)
        flat = new.cells[..., 0] * new.grid.cols + new.cells[..., 1]
        parent = torch.gather(owner, 1, flat)
        if bool((parent < 0).any()):
            raise ValueError("the new state covers cells that no token of the old state covers")
        same_cell = (gather_tokens(old.cells, parent) == new.cells).all(dim=-1)
        kept = same_cell & (gather_tokens(old.levels, parent) == new.levels)
        return cls(parent=parent, kept=kept)

    def carry(self, per_token: torch.Tensor) -> torch.Tensor:
        """(B, N_old, ...) per-token data -> (B, N_new, ...): each new token takes its parent's."""
        return gather_tokens(per_token, self.parent.to(per_token.device))

    @property
    def all_kept(self) -> bool:
        """True when the token set did not change at all (only, possibly, its order)."""
        return bool(self.kept.all())


def footprint_owner(state: TokenState) -> torch.Tensor:
    """(B, rows * cols): for every full-resolution cell, the index of the token covering it (-1: none)."""
    grid = state.grid
    batch = state.batch_size
    owner = torch.full((batch, grid.num_tokens), -1, dtype=torch.long, device=state.cells.device)
    index = torch.arange(state.num_tokens, device=state.cells.device).expand(batch, -1)
    for level in torch.unique(state.levels).tolist():
        side = 1 << int(level)
        mask = state.levels == level
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        offsets = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1).to(state.cells.device)
        for b in range(batch):
            cells = state.cells[b, mask[b]][:, None, :] + offsets  # (M, side*side, 2)
            flat = (cells[..., 0] * grid.cols + cells[..., 1]).reshape(-1)
            owner[b, flat] = index[b, mask[b]].repeat_interleave(side * side)
    return owner
