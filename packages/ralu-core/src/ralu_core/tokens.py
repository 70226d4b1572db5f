"""The latent as a set of tokens at mixed resolution.

RALU and RAS both stop treating the latent as a dense grid: RALU mixes half-resolution and
full-resolution tokens, RAS computes a changing subset of them. So the engine works on a
`TokenState`: per image, a list of tokens with a value, a footprint on the full-resolution
token grid and a level (0 = full resolution, 1 = half resolution, covering 2 x 2 full-resolution
cells). Model adapters translate between this and a pipeline's own latent layout.

A token's value is a latent patch of ``channels x patch x patch`` latent pixels, flattened in
that (channel, row, column) order. FLUX's packed latents already use this order; other models
convert in their adapter. Knowing the patch layout is what lets core upsample pixel-nearest
(the paper's operator) without knowing any model.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

FULL = 0
HALF = 1


@attrs.frozen(kw_only=True)
class TokenGrid:
    """Geometry of the full-resolution token grid of one generation call."""

    rows: int
    cols: int
    channels: int
    patch: int

    @property
    def token_dim(self) -> int:
        return self.channels * self.patch * self.patch

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols

    @property
    def latent_size(self) -> tuple[int, int]:
        """Height and width of the full-resolution latent image in latent pixels."""
        return self.rows * self.patch, self.cols * self.patch

    def supports_half_resolution(self) -> bool:
        return self.rows % 2 == 0 and self.cols % 2 == 0

    def raster_cells(self, device: torch.device | None = None) -> torch.Tensor:
        """(rows * cols, 2) top-left cells of the full grid in raster order."""
        r = torch.arange(self.rows, device=device)
        c = torch.arange(self.cols, device=device)
        return torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)


@attrs.define
class TokenState:
    """Tokens of a batch of images. All images hold the same number of tokens at each level,
    but which cells they cover may differ per image (selection is per image).

    values: (B, N, D) latent patches; cells: (B, N, 2) long, the top-left full-resolution cell
    of each token's footprint (row, col); levels: (B, N) long.
    """

    values: torch.Tensor
    cells: torch.Tensor
    levels: torch.Tensor
    grid: TokenGrid

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.values.shape[1])

    @property
    def coarsest_level(self) -> int:
        return int(self.levels.max().item()) if self.levels.numel() else FULL

    def with_values(self, values: torch.Tensor) -> TokenState:
        return TokenState(values=values, cells=self.cells, levels=self.levels, grid=self.grid)

    def positions(self) -> torch.Tensor:
        """(B, N, 2) float positions in units of the coarsest token present.

        Stage 1 (all half-res) gets the native low-res integer grid, stage 2 keeps low-res tokens
        on integers and puts upsampled children on half offsets, stage 3 is the ordinary
        full-resolution grid: the convention of the RALU paper.
        """
        scale = float(2**self.coarsest_level)
        return self.cells.to(torch.float64) / scale

    def count_at_level(self, level: int) -> int:
        """Tokens at `level` per image (identical across the batch by construction)."""
        return int((self.levels[0] == level).sum().item())

    def indices_at_level(self, level: int) -> torch.Tensor:
        """(B, M) indices of the tokens at `level`, in state order, per image."""
        mask = self.levels == level
        count = int(mask[0].sum().item())
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        return order[:, :count]

    @classmethod
    def full_resolution(cls, values: torch.Tensor, grid: TokenGrid) -> TokenState:
        """Tokens of a dense full-resolution latent in raster order."""
        batch = values.shape[0]
        if values.shape[1:] != (grid.num_tokens, grid.token_dim):
            raise ValueError(
                f"expected latents of shape (B, {grid.num_tokens}, {grid.token_dim}), got {tuple(values.shape)}"
            )
        cells = grid.raster_cells(values.device).expand(batch, -1, -1).clone()
        levels = torch.zeros(batch, grid.num_tokens, dtype=torch.long, device=values.device)
        return cls(values=values, cells=cells, levels=levels, grid=grid)


# --- dense latent images <-> tokens -------------------------------------------------------------


def tokens_to_image(values: torch.Tensor, rows: int, cols: int, channels: int, patch: int) -> torch.Tensor:
    """(B, rows*cols, C*p*p) raster tokens -> (B, C, rows*p, cols*p) latent image."""
    batch = values.shape[0]
    x = values.reshape(batch, rows, cols, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * patch, cols * patch)


def image_to_tokens(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) latent image -> (B, (H/p)*(W/p), C*p*p) raster tokens."""
    batch, channels, height, width = image.shape
    rows, cols = height // patch, width // patch
    x = image.reshape(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, rows * cols, channels * patch * patch)


def downsample_nearest(state: TokenState) -> TokenState:
    """Full-resolution raster state -> half-resolution state by taking every second latent pixel.

    This is how RALU derives its low-resolution starting noise from the full-resolution seeded
    noise, so that one seed gives related images across recipes (and exact N(0, I) noise).
    """
    grid = state.grid
    if state.coarsest_level != FULL or state.num_tokens != grid.num_tokens:
        raise ValueError("downsample_nearest expects a dense full-resolution state")
    if not grid.supports_half_resolution():
        raise ValueError(f"a {grid.rows} x {grid.cols} token grid has no half-resolution grid (needs even sides)")
    raster = to_raster(state)
    image = tokens_to_image(raster.values, grid.rows, grid.cols, grid.channels, grid.patch)
    low = image[:, :, ::2, ::2]
    values = image_to_tokens(low, grid.patch)
    low_rows, low_cols = grid.rows // 2, grid.cols // 2
    r = torch.arange(low_rows, device=values.device) * 2
    c = torch.arange(low_cols, device=values.device) * 2
    cells = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(1, -1, 2)
    cells = cells.expand(state.batch_size, -1, -1).clone()
    levels = torch.full(cells.shape[:2], HALF, dtype=torch.long, device=values.device)
    return TokenState(values=values, cells=cells, levels=levels, grid=grid)


# --- pixel-nearest upsampling of half-resolution tokens ---------------------------------------


def nearest_children(parents: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """(B, K, C*p*p) half-res tokens -> (B, 4K, C*p*p) full-res children, pixel-nearest.

    Each parent latent pixel becomes a 2 x 2 block; the (2p x 2p) result is cut into four p x p
    children ordered (0,0), (0,1), (1,0), (1,1). This is the operator U of the paper.
    """
    batch, count, _ = parents.shape
    x = parents.reshape(batch, count, channels, patch, patch)
    x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    x = x.reshape(batch, count, channels, 2, patch, 2, patch).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(batch, count * 4, channels * patch * patch)


def sum_over_copies(children: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """(B, 4K, C*p*p) children -> (B, K, C*p*p): the adjoint U^T, summing each copy group."""
    batch, count4, _ = children.shape
    count = count4 // 4
    x = children.reshape(batch, count, 2, 2, channels, patch, patch).permute(0, 1, 4, 2, 5, 3, 6)
    x = x.reshape(batch, count, channels, patch, 2, patch, 2)
    return x.sum(dim=(4, 6)).reshape(batch, count, channels * patch * patch)


def child_cells(parent_cells: torch.Tensor) -> torch.Tensor:
    """(B, K, 2) parent cells -> (B, 4K, 2) children cells in the order of `nearest_children`."""
    offsets = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], device=parent_cells.device)
    return (parent_cells[:, :, None, :] + offsets).reshape(parent_cells.shape[0], -1, 2)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along the token axis per image: x (B, N, ...), index (B, K) -> (B, K, ...)."""
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, expanded)


@attrs.frozen
class Split:
    """A state split into upsampled children and the tokens kept as they are.

    The new state lists kept tokens first (in their old order), then the children of each
    selected parent in selection order. `kept` and `children` index the new state.
    """

    state: TokenState
    kept: torch.Tensor
    children: torch.Tensor
    kept_source: torch.Tensor
    parents: torch.Tensor


def upsample_selected(state: TokenState, selected: torch.Tensor, values: torch.Tensor | None = None) -> Split:
    """Replace the selected half-resolution tokens (B, K indices) by their four children.

    `values` (default: the state's values) is what gets upsampled; the transition decides what
    noise to add afterwards.
    """
    values = state.values if values is None else values
    batch, num = state.levels.shape
    if selected.dim() != 2 or selected.shape[0] != batch:
        raise ValueError(f"selected indices must have shape (B, K), got {tuple(selected.shape)}")
    if selected.numel() and not bool((gather_tokens(state.levels, selected) == HALF).all()):
        raise ValueError("only half-resolution tokens can be upsampled")
    count = selected.shape[1]
    chosen = torch.zeros(batch, num, dtype=torch.bool, device=values.device)
    chosen.scatter_(1, selected, True)
    if int(chosen[0].sum()) != count:
        raise ValueError("selected token indices must be distinct")
    kept_source = torch.argsort(chosen.to(torch.int8), dim=1, stable=True)[:, : num - count]
    grid = state.grid
    children_values = nearest_children(gather_tokens(values, selected), grid.channels, grid.patch)
    children_cells = child_cells(gather_tokens(state.cells, selected))
    new_values = torch.cat([gather_tokens(values, kept_source), children_values], dim=1)
    new_cells = torch.cat([gather_tokens(state.cells, kept_source), children_cells], dim=1)
    new_levels = torch.cat(
        [gather_tokens(state.levels, kept_source), torch.full(children_cells.shape[:2], FULL, device=values.device)],
        dim=1,
    )
    kept_count = num - count
    arange = torch.arange(kept_count + 4 * count, device=values.device).expand(batch, -1)
    return Split(
        state=TokenState(values=new_values, cells=new_cells, levels=new_levels, grid=grid),
        kept=arange[:, :kept_count],
        children=arange[:, kept_count:],
        kept_source=kept_source,
        parents=selected,
    )


# --- orderings and renders ----------------------------------------------------------------------


def raster_order(state: TokenState) -> torch.Tensor:
    """(B, N) permutation that sorts a full-resolution state into raster order."""
    if state.coarsest_level != FULL:
        raise ValueError("raster order needs a state where every token is at full resolution")
    keys = state.cells[..., 0] * state.grid.cols + state.cells[..., 1]
    order = torch.argsort(keys, dim=1)
    expected = torch.arange(state.grid.num_tokens, device=keys.device)
    if state.num_tokens != state.grid.num_tokens or not bool((torch.gather(keys, 1, order) == expected).all()):
        raise ValueError("the tokens do not cover the full-resolution grid exactly once")
    return order


def to_raster(state: TokenState) -> TokenState:
    """The same tokens re-ordered into raster order (the layout pipelines expect)."""
    order = raster_order(state)
    return TokenState(
        values=gather_tokens(state.values, order),
        cells=gather_tokens(state.cells, order),
        levels=gather_tokens(state.levels, order),
        grid=state.grid,
    )


def render_latent(state: TokenState, values: torch.Tensor | None = None, level: int = FULL) -> torch.Tensor:
    """Paint tokens into a dense latent image at `level` (0: full size, 1: half size).

    Half-res tokens are upsampled pixel-nearest, full-res tokens placed as they are; a half-size
    render then average-pools 2 x 2, which reproduces half-res tokens exactly. Selectors use it to
    look at a (clean estimate of a) mixed state as one picture.
    """
    values = state.values if values is None else values
    grid = state.grid
    batch = values.shape[0]
    dense = torch.zeros(batch, grid.num_tokens, grid.token_dim, dtype=values.dtype, device=values.device)
    full = state.levels == FULL
    for image in range(batch):
        f_idx = full[image].nonzero().squeeze(1)
        h_idx = (~full[image]).nonzero().squeeze(1)
        f_cells = state.cells[image, f_idx]
        dense[image, f_cells[:, 0] * grid.cols + f_cells[:, 1]] = values[image, f_idx]
        if h_idx.numel():
            kids = nearest_children(values[image, h_idx][None], grid.channels, grid.patch)[0]
            k_cells = child_cells(state.cells[image, h_idx][None])[0]
            dense[image, k_cells[:, 0] * grid.cols + k_cells[:, 1]] = kids
    image_full = tokens_to_image(dense, grid.rows, grid.cols, grid.channels, grid.patch)
    if level == FULL:
        return image_full
    if level == HALF:
        return F.avg_pool2d(image_full, 2)
    raise ValueError(f"level must be 0 (full) or 1 (half), got {level}")


def dense_level(state: TokenState) -> int | None:
    """The level L if the state is the complete grid at level L in raster order, else None.

    Adapters use it to hand such states to the model's own dense forward (stage 1 is the dense
    half-resolution grid, stage 3 and baselines the dense full grid).
    """
    level = state.coarsest_level
    if not bool((state.levels == level).all()):
        return None
    rows, cols = state.grid.rows >> level, state.grid.cols >> level
    if state.num_tokens != rows * cols:
        return None
    r = torch.arange(rows, device=state.cells.device) << level
    c = torch.arange(cols, device=state.cells.device) << level
    expected = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(1, -1, 2)
    return level if bool((state.cells == expected).all()) else None
