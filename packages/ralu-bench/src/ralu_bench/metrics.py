"""Paired fidelity metrics: how close an accelerated image is to the baseline image of the same seed.

PSNR and SSIM come from scikit-image (a well-kept, widely used implementation). RALU's typical
failure is at edges (aliasing where half-resolution tokens were upsampled late), so `edge_psnr`
restricts the error to a band around the reference image's Canny edges: a drop there that the
whole-image PSNR hides is the artifact. LPIPS needs pretrained network weights that cannot be
downloaded everywhere; it is computed only when they are available locally and otherwise reported
as skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import attrs
import cv2
import numpy as np
import numpy.typing as npt
import torch

Image = npt.NDArray[np.uint8]

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"


def _check_pair(image: Image, reference: Image) -> None:
    if image.shape != reference.shape or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected two (H, W, 3) images of one size, got {image.shape} and {reference.shape}")
    if image.dtype != np.uint8 or reference.dtype != np.uint8:
        raise ValueError("expected uint8 images (0..255)")


def psnr(image: Image, reference: Image) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    from skimage.metrics import peak_signal_noise_ratio

    _check_pair(image, reference)
    if np.array_equal(image, reference):
        return math.inf
    return float(peak_signal_noise_ratio(reference, image, data_range=255))


def ssim(image: Image, reference: Image) -> float:
    """Structural similarity (mean over the image, colour channels averaged), in [-1, 1]."""
    from skimage.metrics import structural_similarity

    _check_pair(image, reference)
    side = min(image.shape[:2])
    window = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(reference, image, data_range=255, channel_axis=-1, win_size=window))


def edge_band(reference: Image, width: int = 2, low: int = 100, high: int = 200) -> npt.NDArray[np.bool_]:
    """Pixels within `width` of a Canny edge of the reference (grey, thresholds as RALU's selector)."""
    grey = cv2.cvtColor(np.ascontiguousarray(reference), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, low, high) > 0
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(edges.astype(np.uint8), kernel) > 0


def edge_psnr(image: Image, reference: Image, width: int = 2) -> float:
    """PSNR in dB over the band around the reference's edges (nan if the reference has no edges)."""
    _check_pair(image, reference)
    band = edge_band(reference, width)
    if not band.any():
        return math.nan
    diff = image.astype(np.float64)[band] - reference.astype(np.float64)[band]
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can run offline here, and if not, why (for the report)."""
    if importlib.util.find_spec("lpips") is None:
        return False, "LPIPS skipped: the `lpips` package is not installed"
    if importlib.util.find_spec("torchvision") is None:
        return False, "LPIPS skipped: `lpips` needs torchvision, which is not installed"
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
    if not checkpoint.is_file():
        return False, f"LPIPS skipped: its AlexNet weights are not available locally ({checkpoint} is missing)"
    return True, "LPIPS (AlexNet) computed from local weights"


class LPIPS:
    """Thin wrapper around the `lpips` package; construct only when `lpips_status()` is true."""

    def __init__(self) -> None:
        import lpips

        self.model: Any = lpips.LPIPS(net="alex", verbose=False).eval()

    def __call__(self, image: Image, reference: Image) -> float:
        _check_pair(image, reference)

        def tensor(x: Image) -> torch.Tensor:
            return torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1

        with torch.no_grad():
            return float(self.model(tensor(image), tensor(reference)).item())


@attrs.frozen(kw_only=True)
class Fidelity:
    psnr: float
    ssim: float
    edge_psnr: float
    lpips: float | None = None


def fidelity(image: Image, reference: Image, lpips_model: LPIPS | None = None) -> Fidelity:
    """All paired metrics of one image against its baseline counterpart."""
    return Fidelity(
        psnr=psnr(image, reference),
        ssim=ssim(image, reference),
        edge_psnr=edge_psnr(image, reference),
        lpips=None if lpips_model is None else lpips_model(image, reference),
    )
