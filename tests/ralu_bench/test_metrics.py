"""Paired fidelity metrics behave as a user reading a report expects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ralu_bench.metrics import edge_band, edge_psnr, fidelity, lpips_status, psnr, ssim
from ralu_bench.shapes import ShapesDataset


@pytest.fixture
def reference() -> np.ndarray:
    return ShapesDataset(seed=5, length=1)[0].image


def test_identical_images_are_perfect(reference) -> None:  # type: ignore[no-untyped-def]
    result = fidelity(reference, reference)
    assert result.psnr == math.inf and result.edge_psnr == math.inf and result.ssim == pytest.approx(1.0)


def test_psnr_matches_its_definition(reference) -> None:  # type: ignore[no-untyped-def]
    noisy = np.clip(reference.astype(int) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((noisy.astype(float) - reference.astype(float)) ** 2)
    assert psnr(noisy, reference) == pytest.approx(10 * math.log10(255**2 / mse))


def test_more_noise_is_worse(reference) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)

    def noisy(sigma: float) -> np.ndarray:
        return np.clip(reference + rng.normal(0, sigma, reference.shape), 0, 255).astype(np.uint8)

    light, heavy = noisy(3), noisy(20)
    assert psnr(light, reference) > psnr(heavy, reference)
    assert ssim(light, reference) > ssim(heavy, reference)


def test_edge_psnr_sees_blocky_edges_that_whole_image_psnr_dilutes(reference) -> None:  # type: ignore[no-untyped-def]
    # Nearest-neighbour 4x down-and-up: staircase edges, flat regions untouched.
    blocky = reference[::4, ::4].repeat(4, axis=0).repeat(4, axis=1)
    assert edge_band(reference).any()
    assert edge_psnr(blocky, reference) < psnr(blocky, reference) - 3


def test_mismatched_inputs_are_refused(reference) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="one size"):
        psnr(reference[:64], reference)
    with pytest.raises(ValueError, match="uint8"):
        ssim(reference.astype(np.float32), reference.astype(np.float32))  # type: ignore[arg-type]


def test_lpips_status_explains_itself() -> None:
    available, reason = lpips_status()
    assert isinstance(available, bool) and reason.startswith("LPIPS")
