"""What an image quality metric is, for ``ralu bench`` and the plugins that register metrics.

A plain protocol at the bottom of the package, so that the hook specifications can name it
without depending on the benchmark runner.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""An RGB image, (H, W, 3) uint8."""


class ImageMetric(abc.ABC):
    """A quality score of one generated image. Paired metrics compare with the baseline's image of the
    same prompt and seed; unpaired ones read the prompt. Return None to decline (e.g. a prompt the
    metric cannot parse)."""

    name: ClassVar[str]
    paired: ClassVar[bool]
    higher_is_better: ClassVar[bool] = True

    @abc.abstractmethod
    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None: ...

    def note(self) -> str:
        """A line for the report (e.g. why the metric was skipped)."""
        return ""

    def unavailable(self) -> str:
        """Why this metric cannot score anything here (its weights are missing), or "" where it can."""
        return ""

    def unit_score(self, value: float) -> float:
        """`value` on [0, 1], higher better, so that ``ralu tune`` can average metrics of different scales.
        Default: the value clamped to [0, 1] (flipped where lower is better); metrics on other scales (PSNR in
        dB) override it."""
        unit = min(1.0, max(0.0, value))
        return unit if self.higher_is_better else 1.0 - unit
