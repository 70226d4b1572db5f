"""An example ralu plugin: the `center-focus` token selector.

Photographs and generated images tend to put their subject near the centre, so upsampling the
central tokens first is a cheap, decode-free alternative to edge detection. The selector scores
each candidate by a Gaussian of its distance from the image centre, optionally mixed with the
clean estimate's local contrast, and keeps the top `ratio`.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

import ralu_core
from ralu_core.sampling.tokens import gather_tokens
from ralu_core.strategies.selectors import RatioSelector


@attrs.frozen(kw_only=True)
class CenterFocusConfig:
    ratio: float = attrs.field(default=0.3, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)])
    """Fraction of candidate tokens to select."""
    width: float = attrs.field(default=0.35, validator=attrs.validators.gt(0.0))
    """Standard deviation of the centre prior, as a fraction of the image side."""
    contrast_weight: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    """How much the clean estimate's per-token standard deviation adds to the score."""


class CenterFocusSelector(RatioSelector):
    """Top-r tokens nearest the image centre (optionally weighted by local contrast)."""

    name: ClassVar[str] = "center-focus"
    Config: ClassVar[type[CenterFocusConfig]] = CenterFocusConfig  # type: ignore[assignment]

    def scores(self, request: ralu_core.strategies.SelectionRequest) -> torch.Tensor:
        grid = request.state.grid
        cells = gather_tokens(request.state.cells, request.candidates).float()
        levels = gather_tokens(request.state.levels, request.candidates).float()
        centre_of_token = cells + (2.0**levels)[..., None] / 2  # footprint centre in cell units
        centre = torch.tensor([grid.rows / 2, grid.cols / 2])
        side = torch.tensor([grid.rows, grid.cols], dtype=torch.float32)
        distance = ((centre_of_token - centre) / side).pow(2).sum(-1)
        score = torch.exp(-distance / (2 * self.config.width**2))
        if self.config.contrast_weight and request.clean_estimate is not None:
            contrast = gather_tokens(request.clean_estimate, request.candidates).float().std(dim=-1)
            score = score + self.config.contrast_weight * contrast / (contrast.amax(1, keepdim=True) + 1e-8)
        return score


@ralu_core.hookimpl
def ralu_register_token_selectors(register) -> None:  # type: ignore[no-untyped-def]
    register(CenterFocusSelector)


__all__ = ["CenterFocusConfig", "CenterFocusSelector"]
