"""SD3's 2-D sine-cosine position embeddings, evaluated at any (fractional) token position.

SD3 adds an absolute embedding to each patch token, cropped from a centred
``pos_embed_max_size`` x ``pos_embed_max_size`` grid. For a grid of h x w patches the crop starts
at ``top = (M - h) // 2``, ``left = (M - w) // 2``; grid index i has the coordinate
``i / (M / base_size) / interpolation_scale``; a token's embedding is the 1-D sine-cosine code of
its column coordinate followed by that of its row coordinate (half the channels each).

Mixed-resolution tokens get positions in units of the coarsest token present (ralu-core's
convention: the native low-res grid in stage 0, half offsets for upsampled children in stage 1, the
full grid in stage 2). Here they are placed in the crop of the grid at that coarsest level and fed
through the same formula. On an ordinary grid this reproduces the model's own PatchEmbed exactly.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch


def sincos_1d(coordinates: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) coordinates -> (N, dim): [sin(x w_k), cos(x w_k)] with w_k = 10000^(-2k/dim), in float64."""
    if dim % 2:
        raise ValueError(f"a sine-cosine embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64, device=coordinates.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = torch.outer(coordinates.to(torch.float64).reshape(-1), omega)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@attrs.frozen(kw_only=True)
class SinCosGrid:
    """The geometry of one SD3 PatchEmbed's position embedding."""

    embed_dim: int
    max_size: int | None
    base_size: int
    interpolation_scale: float

    @classmethod
    def of(cls, patch_embed: Any) -> SinCosGrid:
        return cls(
            embed_dim=int(patch_embed.proj.out_channels),
            max_size=patch_embed.pos_embed_max_size,
            base_size=int(patch_embed.base_size),
            interpolation_scale=float(patch_embed.interpolation_scale),
        )

    def check_fits(self, rows: int, cols: int) -> None:
        if self.max_size is not None and max(rows, cols) > self.max_size:
            raise ValueError(
                f"a {rows} x {cols} patch grid exceeds this model's position embedding ({self.max_size} x "
                f"{self.max_size} patches); use a smaller image"
            )

    def embed(self, positions: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(..., 2) float positions (row, col) on a `rows` x `cols` patch grid -> (..., embed_dim) float32."""
        self.check_fits(rows, cols)
        if self.max_size is not None:
            extent_rows = extent_cols = self.max_size
            top, left = (self.max_size - rows) // 2, (self.max_size - cols) // 2
        else:  # no cropping: the grid itself is rescaled to base_size
            extent_rows, extent_cols = rows, cols
            top = left = 0
        # The crop offsets as Python numbers (exact in float64): a tensor of them would be a host-to-device copy.
        index = positions.to(torch.float64)
        row_index, col_index = index[..., 0] + top, index[..., 1] + left
        # Same arithmetic as diffusers: coordinates in float32, the sine-cosine in float64.
        row_coord = row_index.to(torch.float32) / (extent_rows / self.base_size) / self.interpolation_scale
        col_coord = col_index.to(torch.float32) / (extent_cols / self.base_size) / self.interpolation_scale
        half = self.embed_dim // 2
        flat = torch.cat([sincos_1d(col_coord, half), sincos_1d(row_coord, half)], dim=1)
        return flat.reshape(*positions.shape[:-1], self.embed_dim).to(torch.float32)
