"""Built-in token selectors: `canny-edge`, `latent-gradient`, `random` and `all`.

RALU upsamples edge regions first because that is where a half-resolution latent aliases; the
paper scores each low-res token by the Canny edge pixels of the decoded clean estimate inside
its footprint and takes the top r. `latent-gradient` is the paper's cheaper ablation (no VAE
decode), `random` the control, `all` the final full-resolution transition.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ralu_core.errors import ConfigFieldError
from ralu_core.randomness import rand
from ralu_core.strategies.base import SelectionRequest, TokenSelector
from ralu_core.tokens import FULL, HALF, TokenState, gather_tokens


def _ratio_in_range(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigFieldError(
            attribute.name, f"ratio must be in (0, 1] (a fraction of the candidate tokens), got {value}"
        )


def top_count(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the `count` highest scores per row; ties go to the lower position, and the
    result is sorted ascending so that the token layout does not depend on score order."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :count]
    return torch.sort(order, dim=1).values


def footprint_scores(cell_map: torch.Tensor, state: TokenState, candidates: torch.Tensor) -> torch.Tensor:
    """Sum a per-cell map (B, rows, cols) over each candidate token's footprint -> (B, M)."""
    cells = gather_tokens(state.cells, candidates)
    levels = gather_tokens(state.levels, candidates)
    scores = torch.zeros(candidates.shape, dtype=cell_map.dtype, device=cell_map.device)
    for level in (FULL, HALF):
        mask = levels == level
        if not bool(mask.any()):
            continue
        pooled = cell_map if level == FULL else F.avg_pool2d(cell_map[:, None], 2)[:, 0] * 4
        rows = cells[..., 0] >> level
        cols = cells[..., 1] >> level
        batch = torch.arange(cell_map.shape[0], device=cell_map.device)[:, None].expand_as(rows)
        scores = torch.where(mask, pooled[batch, rows.clamp(max=pooled.shape[1] - 1), cols], scores)
    return scores


def _block_sum(image_map: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, H, W) -> (B, rows, cols) sums over equal blocks; H and W must be multiples."""
    batch, height, width = image_map.shape
    if height % rows or width % cols:
        raise ValueError(f"a {height} x {width} map does not divide into a {rows} x {cols} token grid")
    blocks = image_map.reshape(batch, rows, height // rows, cols, width // cols)
    return blocks.sum(dim=(2, 4))


class RatioSelector(TokenSelector):
    """Base for selectors that keep the top `ratio` of the candidates by a score."""

    @attrs.frozen(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.3, validator=_ratio_in_range)
        """Fraction of candidates selected, int(M * ratio). Larger is closer to full quality and slower."""

    def planned_count(self, num_candidates: int) -> int:
        return int(num_candidates * self.config.ratio)

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        raise NotImplementedError

    def select(self, request: SelectionRequest) -> torch.Tensor:
        count = self.planned_count(request.candidates.shape[1])
        return top_count(self.scores(request), count)


def _require_clean_estimate(request: SelectionRequest, name: str) -> torch.Tensor:
    if request.clean_estimate is None:
        raise ValueError(f"the {name} selector needs a clean estimate (use it at a stage transition)")
    return request.clean_estimate


class CannyEdgeSelector(RatioSelector):
    """Top-r tokens by Canny edge pixels of the VAE-decoded clean estimate (the RALU paper's choice)."""

    name: ClassVar[str] = "canny-edge"
    decodes: ClassVar[bool] = True

    @attrs.frozen(kw_only=True)
    class Config:
        ratio: float = attrs.field(default=0.3, validator=_ratio_in_range)
        """Fraction of candidates upsampled. The paper uses 0.2-0.3; quality peaks near 0.3."""
        low_threshold: float = attrs.field(default=100.0, validator=attrs.validators.ge(0.0))
        """Canny hysteresis low threshold on an 8-bit grey image."""
        high_threshold: float = attrs.field(default=200.0, validator=attrs.validators.ge(0.0))
        """Canny hysteresis high threshold on an 8-bit grey image."""

        def __attrs_post_init__(self) -> None:
            if self.low_threshold > self.high_threshold:
                raise ValueError(
                    f"low_threshold ({self.low_threshold}) must not exceed high_threshold ({self.high_threshold})"
                )

    def edge_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, H, W) float, 1 at Canny edge pixels."""
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=images.device)
        grey = (images.float().clamp(0, 1) * weights[:, None, None]).sum(dim=1)
        grey_u8 = (grey * 255.0).round().to(torch.uint8).cpu().numpy()
        edges = [
            cv2.Canny(np.ascontiguousarray(g), self.config.low_threshold, self.config.high_threshold) > 0
            for g in grey_u8
        ]
        return torch.from_numpy(np.stack(edges)).to(torch.float32)

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        clean = _require_clean_estimate(request, self.name)
        images = request.decode(request.render(clean, HALF))
        grid = request.state.grid
        cell_map = _block_sum(self.edge_map(images), grid.rows, grid.cols)
        return footprint_scores(cell_map.to(clean.device), request.state, request.candidates)


class LatentGradientSelector(RatioSelector):
    """Top-r tokens by Sobel gradient magnitude of the clean estimate in latent space (no decode)."""

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
        return rand(tuple(request.candidates.shape), request.generator, device=request.candidates.device)


class AllSelector(TokenSelector):
    """Every candidate: the last upsampling transition, or dense steps."""

    name: ClassVar[str] = "all"
    covers_all: ClassVar[bool] = True

    def planned_count(self, num_candidates: int) -> int:
        return num_candidates

    def select(self, request: SelectionRequest) -> torch.Tensor:
        batch, count = request.candidates.shape
        return torch.arange(count, device=request.candidates.device).expand(batch, -1)


BUILTIN_SELECTORS: tuple[type[TokenSelector], ...] = (
    CannyEdgeSelector,
    LatentGradientSelector,
    RandomSelector,
    AllSelector,
)
