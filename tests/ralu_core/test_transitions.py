"""NT-DM noise injection: the upsampled latent must be distributed exactly like a full-resolution
latent at the rewound time s: mean s * Up(data), covariance (1 - s)^2 I (Monte Carlo)."""

from __future__ import annotations

import pytest
import torch

from ralu_core.sampling.ntdm import rewind_start
from ralu_core.sampling.tokens import HALF, TokenGrid, TokenState, downsample_nearest, nearest_children
from ralu_core.strategies.base import TransitionRequest
from ralu_core.strategies.transitions import NaiveUpsample, NTDMUpsample, correlated_noise

GRID = TokenGrid(rows=4, cols=4, channels=1, patch=2)  # 2 x 2 half-res tokens of 4 values each
END, C = 0.3, 0.2


def end_of_stage_state(samples: int, data: torch.Tensor, seed: int) -> TokenState:
    """x = e * data + (1 - e) * eps at half resolution, eps ~ N(0, I) i.i.d. per sample."""
    gen = torch.Generator().manual_seed(seed)
    full = TokenState.full_resolution(torch.zeros(samples, GRID.num_tokens, GRID.token_dim), GRID)
    low = downsample_nearest(full)
    eps = torch.randn(low.values.shape, generator=gen, dtype=torch.float64)
    return low.with_values(END * data + (1 - END) * eps)


def test_injected_noise_matches_target_mean_and_covariance() -> None:
    samples = 200_000
    data = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    state = end_of_stage_state(samples, data, seed=1)
    start = rewind_start(END, C)
    selected = torch.tensor([[1, 2]]).expand(samples, -1)
    out = NTDMUpsample().apply(
        TransitionRequest(
            state=state,
            selected=selected,
            sigma_from=1 - END,
            sigma_to=1 - start,
            generator=torch.Generator().manual_seed(2),
        )
    )
    kept_data = data[:, [0, 3]]
    child_data = nearest_children(data[:, [1, 2]], 1, 2)
    target_mean = start * torch.cat([kept_data, child_data], dim=1).reshape(-1)
    x = out.values.reshape(samples, -1)
    centred = (x - target_mean) / (1 - start)
    assert centred.mean(0).abs().max() < 0.01
    cov = centred.T @ centred / samples
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    assert (cov - eye).abs().max() < 0.02
    kept_diag = cov.diagonal()[:8].mean()
    child_diag = cov.diagonal()[8:].mean()
    # (1 - c) I for kept tokens: drawing N(0, I) there instead would give 1 + c = 1.2 here.
    assert abs(kept_diag - 1) < 0.01 and abs(child_diag - 1) < 0.01
    assert bool((out.levels[:, 2:] == 0).all()) and bool((out.levels[:, :2] == HALF).all())


def test_correlated_noise_has_the_prescribed_group_covariance() -> None:
    eps = torch.randn(400_000, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = correlated_noise(eps, C, 1, 2)[:, 0]  # first child: one copy group of 4 values
    cov = z.T @ z / z.shape[0]
    expected = torch.eye(4, dtype=torch.float64) - C * torch.ones(4, 4, dtype=torch.float64)
    assert (cov - expected).abs().max() < 0.01


def test_same_generator_same_noise_and_different_seed_differs() -> None:
    data = torch.zeros(1, 4, 4, dtype=torch.float64)
    state = end_of_stage_state(2, data, seed=0)
    selected = torch.tensor([[0], [3]])
    start = rewind_start(END, C)

    def run(seed: int) -> torch.Tensor:
        request = TransitionRequest(
            state=state,
            selected=selected,
            sigma_from=1 - END,
            sigma_to=1 - start,
            generator=torch.Generator().manual_seed(seed),
        )
        return NTDMUpsample().apply(request).values

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_naive_upsample_copies_values_and_refuses_rewinds() -> None:
    state = end_of_stage_state(1, torch.zeros(1, 4, 4, dtype=torch.float64), seed=0)
    selected = torch.tensor([[2]])
    out = NaiveUpsample().apply(
        TransitionRequest(state=state, selected=selected, sigma_from=0.7, sigma_to=0.7, generator=None)
    )
    assert torch.equal(out.values[:, 3:], nearest_children(state.values[:, [2]], 1, 2))
    with pytest.raises(ValueError, match="must not rewind"):
        NaiveUpsample().apply(
            TransitionRequest(state=state, selected=selected, sigma_from=0.7, sigma_to=0.8, generator=None)
        )


def test_nt_dm_refuses_a_rewind_that_needs_invalid_c() -> None:
    state = end_of_stage_state(1, torch.zeros(1, 4, 4, dtype=torch.float64), seed=0)
    with pytest.raises(ValueError):
        NTDMUpsample().apply(
            TransitionRequest(state=state, selected=torch.tensor([[0]]), sigma_from=0.7, sigma_to=0.7, generator=None)
        )
