"""Inputs given per latent pixel of the full-resolution image, taken to whatever tokens a stage holds.

Variant pipelines hand the model something per latent pixel: inpainting a mask and the image it keeps. A
RALU stage holds tokens at two levels and, after upsampling edges first, in an order of its own, so such an
input is kept at both levels (`TokenField`) and gathered at a state's tokens. `KnownRegion` is inpainting on
top of it: after every step, where the mask is 0 the latents are reset to the input image noised to the next
sigma with the call's initial noise, as diffusers' inpaint pipelines blend them.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

from ralu_core.sampling.tokens import (
    FULL,
    TokenGrid,
    TokenState,
    downsample_area,
    downsample_nearest,
    gather_tokens,
)


@attrs.frozen
class TokenField:
    """A per-token input in raster order at full resolution and, where the grid has one, at half resolution."""

    full: torch.Tensor
    """(B, N, D) at the full-resolution grid."""
    half: torch.Tensor | None
    """(B, N / 4, D) at the half-resolution grid; None where the grid has no half-resolution grid."""

    @classmethod
    def of(
        cls, values: torch.Tensor, grid: TokenGrid, halve: Callable[[TokenState], TokenState] = downsample_area
    ) -> TokenField:
        """`values` (B, N, D) in raster order, taken to half resolution by `halve` (area: an image's content or a
        mask; nearest: noise, as the engine draws its half-resolution start)."""
        state = TokenState.full_resolution(values, grid)
        return cls(full=values, half=halve(state).values if grid.supports_half_resolution() else None)

    def at(self, state: TokenState) -> torch.Tensor:
        """(B, n, D): the input at each of `state`'s tokens, at the token's own level."""
        layout = state.known_layout()
        if layout is not None and layout.raster:  # one complete grid in raster order: the table itself
            return self.full if layout.counts[FULL] else self._half()
        grid = state.grid
        rows, cols = state.cells[..., 0], state.cells[..., 1]
        full_index = rows * grid.cols + cols
        if self.half is None:
            return gather_tokens(self.full, full_index)
        half_index = grid.num_tokens + (rows // 2) * (grid.cols // 2) + cols // 2
        index = torch.where(state.levels == FULL, full_index, half_index)
        return gather_tokens(torch.cat([self.full, self.half], dim=1), index)

    def _half(self) -> torch.Tensor:
        if self.half is None:
            raise ValueError("this grid has no half-resolution grid")
        return self.half


@attrs.frozen
class KnownTokens:
    """The known region at one stage's tokens."""

    image: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor

    def keep(self, values: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """`values` with the kept region reset to the image noised to `sigma`: diffusers' inpaint step,
        ``(1 - mask) * scale_noise(image, sigma, noise) + mask * latents``, in its order and in the latents' dtype
        (at the last step sigma is 0, which keeps the image itself)."""
        s = sigma.to(device=self.image.device, dtype=self.image.dtype)
        noised = s * self.noise + (1.0 - s) * self.image
        return (1 - self.mask) * noised + self.mask * values


@attrs.frozen
class KnownRegion:
    """Inpainting: the input image's latents, the call's initial noise and the mask (1: painted, 0: kept), each at
    both levels. At half resolution the image and the mask are averaged over 2 x 2 latent pixels (a token on the
    mask's edge blends both), and the noise keeps every second pixel, as the half-resolution start does."""

    image: TokenField
    noise: TokenField
    mask: TokenField

    @classmethod
    def of(cls, image: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, grid: TokenGrid) -> KnownRegion:
        """From (B, N, D) raster tokens at full resolution."""
        dtype = noise.dtype
        return cls(
            image=TokenField.of(image.to(dtype), grid),
            noise=TokenField.of(noise, grid, downsample_nearest),
            mask=TokenField.of(mask.to(dtype), grid),
        )

    def at(self, state: TokenState) -> KnownTokens:
        return KnownTokens(image=self.image.at(state), noise=self.noise.at(state), mask=self.mask.at(state))
