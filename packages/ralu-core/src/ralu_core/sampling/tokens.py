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

from collections.abc import Callable

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


@attrs.frozen
class Layout:
    """What ralu's own token operations know about a state's levels and cells without reading the device, so
    that the sampling loop never waits for it (see host_sync.py). It describes the `levels` and `cells` tensors
    it names; a state whose tensors were replaced or changed in place does not trust it, and reads them instead."""

    levels: torch.Tensor
    cells: torch.Tensor
    counts: tuple[int, ...]
    """Tokens per image at level 0, 1, ... (identical across the batch)."""
    tiles: bool
    """The footprints cover the full-resolution grid exactly once."""
    raster: bool
    """Every token is at one level, on the complete grid of that level, in raster order."""
    versions: tuple[int, int] = attrs.field(init=False)
    """The tensors' version counters when described (an in-place change bumps them)."""

    @versions.default
    def _versions_now(self) -> tuple[int, int]:
        return self.levels._version, self.cells._version

    def describes(self, levels: torch.Tensor, cells: torch.Tensor) -> bool:
        return levels is self.levels and cells is self.cells and (levels._version, cells._version) == self.versions


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
    layout: Layout | None = attrs.field(default=None, kw_only=True, eq=False, repr=False)
    """Set by the operations that know it (see `Layout`); None: read from the tensors when needed."""

    def known_layout(self) -> Layout | None:
        """The layout, where it still describes this state's tensors."""
        layout = self.layout
        return layout if layout is not None and layout.describes(self.levels, self.cells) else None

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.values.shape[1])

    @property
    def coarsest_level(self) -> int:
        layout = self.known_layout()
        if layout is not None:
            return max((level for level, count in enumerate(layout.counts) if count), default=FULL)
        return int(self.levels.max().item()) if self.levels.numel() else FULL

    def with_values(self, values: torch.Tensor) -> TokenState:
        return TokenState(values=values, cells=self.cells, levels=self.levels, grid=self.grid, layout=self.layout)

    def positions(self) -> torch.Tensor:
        """(B, N, 2) float positions in units of the coarsest token present.

        Stage 0 (all half-res) gets the native low-res integer grid, stage 1 keeps low-res tokens
        on integers and puts upsampled children on half offsets, stage 2 is the ordinary
        full-resolution grid: the convention of the RALU paper.
        """
        scale = float(2**self.coarsest_level)
        return self.cells.to(torch.float64) / scale

    def count_at_level(self, level: int) -> int:
        """Tokens at `level` per image (identical across the batch by construction)."""
        layout = self.known_layout()
        if layout is not None:
            return layout.counts[level] if 0 <= level < len(layout.counts) else 0
        return int((self.levels[0] == level).sum().item())

    def indices_at_level(self, level: int) -> torch.Tensor:
        """(B, M) indices of the tokens at `level`, in state order, per image."""
        mask = self.levels == level
        count = self.count_at_level(level)
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
        layout = Layout(levels=levels, cells=cells, counts=(grid.num_tokens,), tiles=True, raster=True)
        return cls(values=values, cells=cells, levels=levels, grid=grid, layout=layout)


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
    return _downsample(state, lambda image: image[:, :, ::2, ::2])


def downsample_area(state: TokenState) -> TokenState:
    """Full-resolution raster state -> half-resolution state by averaging each 2 x 2 block of latent pixels:
    for an image's latents (image-to-image), whose content every second pixel would alias."""
    return _downsample(state, lambda image: torch.nn.functional.avg_pool2d(image, 2))


def _downsample(state: TokenState, reduce: Callable[[torch.Tensor], torch.Tensor]) -> TokenState:
    grid = state.grid
    if state.coarsest_level != FULL or state.num_tokens != grid.num_tokens:
        raise ValueError("downsampling expects a dense full-resolution state")
    if not grid.supports_half_resolution():
        raise ValueError(f"a {grid.rows} x {grid.cols} token grid has no half-resolution grid (needs even sides)")
    raster = to_raster(state)
    image = tokens_to_image(raster.values, grid.rows, grid.cols, grid.channels, grid.patch)
    low = reduce(image)
    values = image_to_tokens(low, grid.patch)
    low_rows, low_cols = grid.rows // 2, grid.cols // 2
    r = torch.arange(low_rows, device=values.device) * 2
    c = torch.arange(low_cols, device=values.device) * 2
    cells = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(1, -1, 2)
    cells = cells.expand(state.batch_size, -1, -1).clone()
    levels = torch.full(cells.shape[:2], HALF, dtype=torch.long, device=values.device)
    layout = Layout(levels=levels, cells=cells, counts=(0, low_rows * low_cols), tiles=True, raster=True)
    return TokenState(values=values, cells=cells, levels=levels, grid=grid, layout=layout)


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
    # [[0, 0], [0, 1], [1, 0], [1, 1]], made on the device: a tensor of Python data would be a host-to-device copy.
    child = torch.arange(4, device=parent_cells.device)
    offsets = torch.stack([child // 2, child % 2], dim=-1)
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


def upsample_selected(
    state: TokenState, selected: torch.Tensor, values: torch.Tensor | None = None, *, checked: bool = False
) -> Split:
    """Replace the selected half-resolution tokens (B, K indices) by their four children.

    `values` (default: the state's values) is what gets upsampled; the transition decides what
    noise to add afterwards. `checked`: the caller knows that `selected` are distinct half-resolution
    tokens (the engine's `TransitionRequest.selected` are), so they are not checked again: the checks
    read the device, which would make the host wait for it.
    """
    values = state.values if values is None else values
    batch, num = state.levels.shape
    if selected.dim() != 2 or selected.shape[0] != batch:
        raise ValueError(f"selected indices must have shape (B, K), got {tuple(selected.shape)}")
    if not checked and selected.numel() and not bool((gather_tokens(state.levels, selected) == HALF).all()):
        raise ValueError("only half-resolution tokens can be upsampled")
    count = selected.shape[1]
    chosen = torch.zeros(batch, num, dtype=torch.bool, device=values.device)
    chosen.scatter_(1, selected, True)
    if not checked and int(chosen[0].sum()) != count:
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
        state=TokenState(
            values=new_values,
            cells=new_cells,
            levels=new_levels,
            grid=grid,
            layout=_upsampled_layout(state.known_layout(), count, new_levels, new_cells),
        ),
        kept=arange[:, :kept_count],
        children=arange[:, kept_count:],
        kept_source=kept_source,
        parents=selected,
    )


def _upsampled_layout(before: Layout | None, count: int, levels: torch.Tensor, cells: torch.Tensor) -> Layout | None:
    """The layout after `count` distinct half-resolution tokens became four full-resolution ones each: nothing is
    left to read from the device where the layout before was known."""
    if before is None:
        return None
    counts = [*before.counts, 0][: max(2, len(before.counts))]
    counts[FULL] += 4 * count
    counts[HALF] -= count
    # Nothing upsampled: the kept tokens stay in their order (a stable sort of equal keys).
    raster = before.raster and count == 0
    return Layout(levels=levels, cells=cells, counts=tuple(counts), tiles=before.tiles, raster=raster)


# --- orderings and renders ----------------------------------------------------------------------


def raster_order(state: TokenState) -> torch.Tensor:
    """(B, N) permutation that sorts a full-resolution state into raster order."""
    if state.coarsest_level != FULL:
        raise ValueError("raster order needs a state where every token is at full resolution")
    keys = state.cells[..., 0] * state.grid.cols + state.cells[..., 1]
    order = torch.argsort(keys, dim=1)
    layout = state.known_layout()
    if layout is not None and layout.tiles:  # made by ralu's own operations: no need to read the cells back
        return order
    expected = torch.arange(state.grid.num_tokens, device=keys.device)
    if state.num_tokens != state.grid.num_tokens or not bool((torch.gather(keys, 1, order) == expected).all()):
        raise ValueError("the tokens do not cover the full-resolution grid exactly once")
    return order


def to_raster(state: TokenState) -> TokenState:
    """The same tokens re-ordered into raster order (the layout pipelines expect)."""
    order = raster_order(state)
    cells, levels = gather_tokens(state.cells, order), gather_tokens(state.levels, order)
    # raster_order checked (or knew) that every token is at full resolution and the grid is covered once.
    layout = Layout(levels=levels, cells=cells, counts=(state.grid.num_tokens,), tiles=True, raster=True)
    return TokenState(
        values=gather_tokens(state.values, order), cells=cells, levels=levels, grid=state.grid, layout=layout
    )


def render_latent(state: TokenState, values: torch.Tensor | None = None, level: int = FULL) -> torch.Tensor:
    """Paint tokens into a dense latent image at `level` (0: full size, 1: half size).

    Half-res tokens are upsampled pixel-nearest, full-res tokens placed as they are; a half-size
    render then average-pools 2 x 2, which reproduces half-res tokens exactly. Selectors use it to
    look at a (clean estimate of a) mixed state as one picture.
    """
    values = state.values if values is None else values
    grid = state.grid
    batch, count, dim = values.shape
    # Every token painted as four copies on 2 x 2 cells (a full-resolution token: four times itself, on its own
    # cell), so that no token count is read from the device; duplicate writes carry identical values.
    full = (state.levels == FULL)[:, :, None, None]
    own = values[:, :, None, :].expand(batch, count, 4, dim)
    kids = nearest_children(values, grid.channels, grid.patch).reshape(batch, count, 4, dim)
    painted = torch.where(full, own, kids).reshape(batch, 4 * count, dim)
    own_cells = state.cells[:, :, None, :].expand(batch, count, 4, 2)
    kid_cells = child_cells(state.cells).reshape(batch, count, 4, 2)
    cells = torch.where(full, own_cells, kid_cells).reshape(batch, 4 * count, 2)
    flat = cells[..., 0] * grid.cols + cells[..., 1]
    dense = torch.zeros(batch, grid.num_tokens, dim, dtype=values.dtype, device=values.device)
    dense.scatter_(1, flat[..., None].expand(-1, -1, dim), painted)
    image_full = tokens_to_image(dense, grid.rows, grid.cols, grid.channels, grid.patch)
    if level == FULL:
        return image_full
    if level == HALF:
        return F.avg_pool2d(image_full, 2)
    raise ValueError(f"level must be 0 (full) or 1 (half), got {level}")


def dense_level(state: TokenState) -> int | None:
    """The level L if the state is the complete grid at level L in raster order, else None.

    Adapters use it to hand such states to the model's own dense forward (stage 0 is the dense
    half-resolution grid, stage 2 and baselines the dense full grid).
    """
    level = state.coarsest_level
    layout = state.known_layout()
    if layout is not None:  # known without reading the device
        if sum(1 for count in layout.counts if count) > 1:
            return None
    elif not bool((state.levels == level).all()):
        return None
    rows, cols = state.grid.rows >> level, state.grid.cols >> level
    if state.num_tokens != rows * cols:
        return None
    if layout is not None and layout.raster:
        return level
    r = torch.arange(rows, device=state.cells.device) << level
    c = torch.arange(cols, device=state.cells.device) << level
    expected = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(1, -1, 2)
    return level if bool((state.cells == expected).all()) else None
