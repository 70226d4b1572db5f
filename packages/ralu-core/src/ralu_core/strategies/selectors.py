"""Built-in token selectors: `canny-edge`, `latent-gradient`, `random` and `all`.

RALU upsamples edge regions first because that is where a half-resolution latent aliases; the
paper scores each low-res token by the Canny edge pixels of the decoded clean estimate inside
its footprint and takes the top r. `latent-gradient` is the paper's cheaper ablation (no VAE
decode), `random` the control, `all` the final full-resolution transition.

Ranking rules shared by every ratio selector: scores are compared lexicographically (a selector
may give secondary scores that only break the ties of the first), and ties that remain are broken
by a uniform draw from the call's generator, never by a token's place in the grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ralu_core.errors import ConfigFieldError, PluginError
from ralu_core.sampling.randomness import GeneratorArg, rand
from ralu_core.sampling.tokens import FULL, HALF, TokenState, gather_tokens
from ralu_core.strategies.base import SelectionRequest, TokenSelector

GREY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma, what OpenCV's RGB -> grey conversion uses (and the paper with it)."""

FLAT_RANGE = 1.0 / 255.0
"""A grey image whose whole range is below one 8-bit level has no edges to find: it is not stretched."""


def _ratio_in_range(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigFieldError(
            attribute.name, f"ratio must be in (0, 1] (a fraction of the candidate tokens), got {value}"
        )


def rank_top(keys: Sequence[torch.Tensor], count: int, generator: GeneratorArg) -> torch.Tensor:
    """Positions of the `count` best candidates per row, sorted ascending.

    `keys` are (B, M) scores, higher is better, most significant first: a later key only orders
    candidates that tie on every earlier one. What still ties is ordered by one uniform draw per
    candidate from `generator` (drawn whatever the scores, so the random stream a call consumes
    does not depend on the image), so no token wins a tie by its position.
    """
    if not keys:
        raise ValueError("rank_top needs at least one score tensor")
    shape = tuple(keys[0].shape)
    device = keys[0].device
    order = torch.argsort(rand(shape, generator, device=device), dim=1, descending=True)
    for key in reversed(keys):  # least significant first; stable sorts keep the earlier order among ties
        ranked = torch.sort(torch.gather(key, 1, order), dim=1, descending=True, stable=True).indices
        order = torch.gather(order, 1, ranked)
    return torch.sort(order[:, :count], dim=1).values


def footprint_scores(cell_map: torch.Tensor, state: TokenState, candidates: torch.Tensor) -> torch.Tensor:
    """Sum a per-cell map (B, rows, cols) over each candidate token's footprint -> (B, M)."""
    cells = gather_tokens(state.cells, candidates)
    levels = gather_tokens(state.levels, candidates)
    scores = torch.zeros(candidates.shape, dtype=cell_map.dtype, device=cell_map.device)
    # A level is skipped only where the host knows it is absent: asking the tensors would wait for the device.
    layout = state.known_layout()
    present = (FULL, HALF) if layout is None else tuple(lvl for lvl in (FULL, HALF) if state.count_at_level(lvl))
    for level in present:
        if level == HALF and min(cell_map.shape[1:]) < 2:  # no half-resolution grid, so no such tokens
            continue
        mask = levels == level
        pooled = cell_map if level == FULL else F.avg_pool2d(cell_map[:, None], 2)[:, 0] * 4
        # Clamped: tokens of the other level index too (their entries are not kept).
        rows = (cells[..., 0] >> level).clamp(max=pooled.shape[1] - 1)
        cols = (cells[..., 1] >> level).clamp(max=pooled.shape[2] - 1)
        batch = torch.arange(cell_map.shape[0], device=cell_map.device)[:, None].expand_as(rows)
        scores = torch.where(mask, pooled[batch, rows, cols], scores)
    return scores


def _block_sum(image_map: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, H, W) -> (B, rows, cols) sums over equal blocks; H and W must be multiples."""
    batch, height, width = image_map.shape
    if height % rows or width % cols:
        raise ValueError(f"a {height} x {width} map does not divide into a {rows} x {cols} token grid")
    blocks = image_map.reshape(batch, rows, height // rows, cols, width // cols)
    return blocks.sum(dim=(2, 4))


def check_scores(selector: TokenSelector, keys: Sequence[torch.Tensor], shape: tuple[int, ...]) -> None:
    """Every score tensor a ratio selector ranks by must hold one score per candidate, (B, M): a short one
    would still rank (its missing candidates never chosen) and a long one would pick positions that are
    not candidates. Shapes are known on the host, so the check costs no wait for the device."""
    if not isinstance(keys, (tuple, list)) or not keys:
        raise PluginError(
            f"{selector.describe()}: ranking must return a tuple of (B, M) score tensors, got {keys!r:.60}"
        )
    for index, key in enumerate(keys):
        found = tuple(key.shape) if isinstance(key, torch.Tensor) else type(key).__name__
        if found != shape:
            which = "scores" if len(keys) == 1 else f"score {index} of ranking"
            raise PluginError(
                f"{selector.describe()}: {which} has shape {found}, expected {shape}: one score per candidate "
                f"(B = {shape[0]} images, M = {shape[1]} candidates)"
            )


class RatioSelector(TokenSelector):
    """Base for selectors that keep the top `ratio` of the candidates by a score.

    Subclasses write `scores`; they may override `ranking` to add secondary scores that break the
    first one's ties. Remaining ties go to the call's generator (see `rank_top`).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.3, validator=_ratio_in_range)
        """Fraction of candidates selected, int(M * ratio). Larger is closer to full quality and slower."""

    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"ratio": (0.1, 0.2, 0.3)}
    """The published plans upsample 0.2 to 0.3 of the tokens early; less is faster and riskier."""

    def planned_count(self, num_candidates: int) -> int:
        return int(num_candidates * self.config.ratio)

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        raise NotImplementedError

    def ranking(self, request: SelectionRequest) -> tuple[torch.Tensor, ...]:
        """(B, M) scores, most significant first. Default: `scores` alone."""
        return (self.scores(request),)

    def select(self, request: SelectionRequest) -> torch.Tensor:
        count = self.planned_count(request.candidates.shape[1]) if request.count is None else request.count
        keys = self.ranking(request)
        check_scores(self, keys, tuple(request.candidates.shape))
        return rank_top(keys, count, request.generator)

    def valid_by_construction(self) -> bool:
        return type(self).select is RatioSelector.select  # rank_top's answer; a subclass's own select is checked


def _require_clean_estimate(request: SelectionRequest, name: str) -> torch.Tensor:
    if request.clean_estimate is None:
        raise ValueError(f"the {name} selector needs a clean estimate (use it at a stage transition)")
    return request.clean_estimate


def grey_levels(images: torch.Tensor) -> npt.NDArray[np.float64]:
    """(B, 3, H, W) RGB in [0, 1] -> (B, H, W) luma in [0, 1], float64 on the CPU."""
    rgb = images.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64)
    weights = np.asarray(GREY_WEIGHTS, dtype=np.float64)
    return np.asarray(np.einsum("bchw,c->bhw", rgb, weights), dtype=np.float64)


def stretch_contrast(grey: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Map one grey image's own [min, max] onto [0, 1]: its contrast and brightness no longer matter.

    An image flatter than `FLAT_RANGE` comes back all zeros: it has no edges, and stretching it
    would turn rounding noise into edges.
    """
    low, high = float(grey.min()), float(grey.max())
    if high - low < FLAT_RANGE:
        return np.zeros_like(grey)
    return (grey - low) / (high - low)


def to_eight_bit(grey: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """[0, 1] -> 0..255, rounded: the image Canny's thresholds are defined on."""
    return np.ascontiguousarray(np.rint(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8))


def sobel_magnitude(grey_u8: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
    """|d/dx| + |d/dy| of the 3 x 3 Sobel operator, Canny's own gradient norm, border replicated.

    On an 8-bit image every value is an integer, so sums over tokens are exact and equal regions
    tie exactly (their order is then the generator's, not float round-off's).
    """
    import cv2  # OpenCV loads where edges are computed, not when the selector is registered

    dx = cv2.Sobel(grey_u8, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    dy = cv2.Sobel(grey_u8, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    return np.asarray(np.abs(dx) + np.abs(dy), dtype=np.float64)


class CannyEdgeSelector(RatioSelector):
    """Top-r tokens by Canny edge pixels of the VAE-decoded clean estimate (the RALU paper's choice).

    Where fewer tokens carry edges than the ratio asks, the rest are ranked by the Sobel gradient
    magnitude of the same 8-bit image (weak edges, shading); tokens with neither are truly flat and
    are drawn from the call's generator.
    """

    name: ClassVar[str] = "canny-edge"
    decodes: ClassVar[bool] = True

    @attrs.frozen(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.3, validator=_ratio_in_range)
        """Fraction of candidates upsampled. The paper uses 0.2-0.3; quality peaks near 0.3."""
        low_threshold: float = attrs.field(default=100.0, validator=attrs.validators.ge(0.0))
        """Canny hysteresis low threshold on the 8-bit grey image (the paper's 100)."""
        high_threshold: float = attrs.field(default=200.0, validator=attrs.validators.ge(0.0))
        """Canny hysteresis high threshold on the 8-bit grey image (the paper's 200)."""
        stretch: bool = True
        """Stretch each grey image to the full 0-255 range before Canny, so that the thresholds mean the
        same for a dim, washed-out or low-contrast clean estimate as for a full-range one. False runs
        Canny on the grey image as decoded (the paper's literal pipeline: it misses low-contrast edges)."""

        def __attrs_post_init__(self) -> None:
            if self.low_threshold > self.high_threshold:
                raise ValueError(
                    f"low_threshold ({self.low_threshold}) must not exceed high_threshold ({self.high_threshold})"
                )

    def grey_images(self, images: torch.Tensor) -> list[npt.NDArray[np.uint8]]:
        """(B, 3, H, W) RGB in [0, 1] -> per image, the 8-bit grey image that Canny runs on."""
        return [to_eight_bit(stretch_contrast(g) if self.config.stretch else g) for g in grey_levels(images)]

    def edge_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, H, W) float, 1 at Canny edge pixels."""
        return self._edges(self.grey_images(images))

    def gradient_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, H, W) Sobel magnitude of the 8-bit image Canny sees."""
        return self._gradients(self.grey_images(images))

    # Canny and Sobel run in OpenCV on the CPU: the decoded image is copied to the host (grey_levels) and the
    # maps back to the device (ranking). These are the sampling loop's only host-device synchronisations that a
    # strategy truly needs (see host_sync.py); a GPU edge detector would remove them but not give the same edges.
    def _edges(self, greys: list[npt.NDArray[np.uint8]]) -> torch.Tensor:
        import cv2

        low, high = self.config.low_threshold, self.config.high_threshold
        return torch.from_numpy(np.stack([cv2.Canny(g, low, high) > 0 for g in greys])).to(torch.float32)

    def _gradients(self, greys: list[npt.NDArray[np.uint8]]) -> torch.Tensor:
        # Integers below 2^24 even summed over a 1024^2 image's token: float32 keeps them (and ties) exact.
        return torch.from_numpy(np.stack([sobel_magnitude(g) for g in greys])).to(torch.float32)

    def ranking(self, request: SelectionRequest) -> tuple[torch.Tensor, ...]:
        """Edge pixels in each candidate's footprint, then the gradient magnitude summed over it."""
        clean = _require_clean_estimate(request, self.name)
        greys = self.grey_images(request.decode(request.render(clean, HALF)))
        grid = request.state.grid
        per_token = []
        for pixel_map in (self._edges(greys), self._gradients(greys)):
            cell_map = _block_sum(pixel_map, grid.rows, grid.cols).to(clean.device)
            per_token.append(footprint_scores(cell_map, request.state, request.candidates))
        return tuple(per_token)

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        """Edge pixels in each candidate's footprint (the primary score of `ranking`)."""
        return self.ranking(request)[0]


class LatentGradientSelector(RatioSelector):
    """Top-r tokens by Sobel gradient magnitude of the clean estimate in latent space (no decode).

    The magnitude does not depend on the latent's offset, and scaling it scales every score alike,
    so the ranking is contrast-free without thresholds; flat tokens tie and go to the generator.
    """

    name: ClassVar[str] = "latent-gradient"

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        clean = _require_clean_estimate(request, self.name).float()
        grid = request.state.grid
        level = HALF if grid.patch % 2 == 0 else FULL
        latent = request.render(clean, level)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=latent.device)
        kernels = torch.stack([sobel, sobel.T])[:, None]
        channels = latent.shape[1]
        flat = F.pad(latent.reshape(-1, 1, *latent.shape[2:]), (1, 1, 1, 1), mode="replicate")
        grads = F.conv2d(flat, kernels).reshape(latent.shape[0], channels, 2, *latent.shape[2:])
        magnitude = grads.pow(2).sum(dim=2).sqrt().mean(dim=1)
        cell_map = _block_sum(magnitude, grid.rows, grid.cols)
        return footprint_scores(cell_map, request.state, request.candidates)


class RandomSelector(RatioSelector):
    """Uniformly random top-r tokens per image, from the call's generator (the ablation control)."""

    name: ClassVar[str] = "random"

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        """No preference: every candidate ties, so the call's generator alone decides (see `rank_top`)."""
        return torch.zeros(request.candidates.shape, device=request.candidates.device)


class AllSelector(TokenSelector):
    """Every candidate: the last upsampling transition, or dense steps."""

    name: ClassVar[str] = "all"
    covers_all: ClassVar[bool] = True

    def planned_count(self, num_candidates: int) -> int:
        return num_candidates

    def select(self, request: SelectionRequest) -> torch.Tensor:
        batch, count = request.candidates.shape
        return torch.arange(count, device=request.candidates.device).expand(batch, -1)

    def valid_by_construction(self) -> bool:
        return type(self).select is AllSelector.select


BUILTIN_SELECTORS: tuple[type[TokenSelector], ...] = (
    CannyEdgeSelector,
    LatentGradientSelector,
    RandomSelector,
    AllSelector,
)
