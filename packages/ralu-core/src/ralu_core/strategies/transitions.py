"""Built-in resolution transitions: `nt-dm-upsample` and `naive-upsample`.

Pixel-nearest upsampling keeps the mean of a noisy latent right but copies its noise: the four
copies of one source value share it, so the noise is correlated (covariance U U^T). NT-DM
injects z ~ N(0, I - c U U^T) and rewinds the timestep so that the result is distributed
exactly like a full-resolution latent at the earlier time s_{k+1}. Tokens not upsampled have
independent noise already, and need z ~ N(0, (1 - c) I) for the same coefficients.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ralu_core.sampling.ntdm import injection_coefficients
from ralu_core.sampling.randomness import randn
from ralu_core.sampling.tokens import TokenState, gather_tokens, nearest_children, sum_over_copies, upsample_selected
from ralu_core.strategies.base import ResolutionTransition, TransitionRequest


def correlated_noise(eps: torch.Tensor, c: float, channels: int, patch: int) -> torch.Tensor:
    """Map i.i.d. children noise eps (B, 4K, D) to z with Cov(z) = I - c * 1 1^T in each copy group.

    z = eps - alpha * U (U^T eps) with alpha = (1 - sqrt(1 - 4c)) / 4 solves
    (I - alpha 1 1^T)^2 = I - c 1 1^T for groups of four.
    """
    alpha = (1.0 - math.sqrt(1.0 - 4.0 * c)) / 4.0
    return eps - alpha * nearest_children(sum_over_copies(eps, channels, patch), channels, patch)


class NTDMUpsample(ResolutionTransition):
    """Pixel-nearest upsampling with NT-DM correlated noise injection and timestep rewind."""

    name: ClassVar[str] = "nt-dm-upsample"

    def apply(self, request: TransitionRequest) -> TokenState:
        end, start = 1.0 - request.sigma_from, 1.0 - request.sigma_to
        a, b, c = injection_coefficients(end, start)
        state = request.state
        grid = state.grid
        split = upsample_selected(state, request.selected, checked=True)
        x = split.state.values.float()
        eps = randn(tuple(x.shape), request.generator, device=x.device, dtype=torch.float32)
        kept_noise = math.sqrt(1.0 - c) * gather_tokens(eps, split.kept)
        child_noise = correlated_noise(gather_tokens(eps, split.children), c, grid.channels, grid.patch)
        noise = torch.cat([kept_noise, child_noise], dim=1)
        values = (a * x + b * noise).to(state.values.dtype)
        return split.state.with_values(values)


class NaiveUpsample(ResolutionTransition):
    """Pixel-nearest upsampling with no noise correction and no rewind (ablation of NT-DM)."""

    name: ClassVar[str] = "naive-upsample"
    rewinds: ClassVar[bool] = False

    def apply(self, request: TransitionRequest) -> TokenState:
        if not math.isclose(request.sigma_from, request.sigma_to, abs_tol=1e-9):
            raise ValueError(
                "naive-upsample injects no noise, so the schedule must not rewind at transitions "
                f"(got sigma {request.sigma_from:.4f} -> {request.sigma_to:.4f}); "
                "use the nt-dm schedule with `rewind: false`, or the nt-dm-upsample transition"
            )
        return upsample_selected(request.state, request.selected, checked=True).state


BUILTIN_TRANSITIONS: tuple[type[ResolutionTransition], ...] = (NTDMUpsample, NaiveUpsample)
