"""What an adapter guarantees for its inpainting pipeline (`InpaintConformance`): everything image-to-image
guarantees (the baseline equals the plain pipeline bit for bit, recipes run, a batch equals its single calls, bad
input is refused before any model runs), and under every recipe the region the mask keeps is the input image's
latents exactly, whatever the recipe does to the resolution or to the tokens it computes.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch

from ralu_core.testing.conformance import PROMPTS
from ralu_core.testing.img2img import Img2ImgConformance


def box_mask(count: int, height: int, width: int, top: float, left: float, bottom: float, right: float) -> torch.Tensor:
    """(count, 1, height, width) masks in [0, 1]: 1 (repaint) inside the box given as fractions of each side."""
    mask = torch.zeros(count, 1, height, width)
    mask[..., int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = 1.0
    return mask


class InpaintConformance(Img2ImgConformance):
    """pytest mixin. Subclass as ``Test...``, set the class attributes, implement `make_pipeline` (a tiny inpaint
    pipeline, e.g. ``FluxInpaintPipeline.from_pipe(tiny)``) and `kept_in_output` (the model's latent layout)."""

    mask_box: ClassVar[tuple[float, float, float, float]] = (0.25, 0.1, 0.7, 0.65)
    """The default mask's box (top, left, bottom, right): its edges fall inside half-resolution tokens, so that
    RALU's first stage sees tokens that are part kept, part painted."""

    @abc.abstractmethod
    def kept_in_output(self, pipe: Any, mask: torch.Tensor) -> torch.Tensor:
        """A boolean tensor in the layout of the pipeline's ``output_type="latent"`` images: True where the
        pipeline's own mask (resized to the latents) keeps the input image."""

    def run_from_image(
        self, pipe: Any, recipe: str | None, prompts: list[str], seeds: list[int] | int, **extra: Any
    ) -> Any:
        extra.setdefault("mask_image", box_mask(1, self.height, self.width, *self.mask_box))
        return super().run_from_image(pipe, recipe, prompts, seeds, **extra)

    def test_every_recipe_keeps_the_unmasked_region_exactly(self) -> None:
        pipe = self.fresh()
        masks = torch.cat(
            [box_mask(1, self.height, self.width, *self.mask_box), box_mask(1, self.height, self.width, 0, 0.5, 1, 1)]
        )
        kept = self.kept_in_output(pipe, masks)
        assert kept.any() and not kept.all(), "the test's masks must keep part of the image and paint the rest"
        baseline = self.run_from_image(pipe, self.baseline, list(PROMPTS), [3, 4], mask_image=masks)
        for recipe in self.recipes:
            ours = self.run_from_image(pipe, recipe, list(PROMPTS), [3, 4], mask_image=masks)
            assert torch.equal(ours[kept], baseline[kept]), f"{recipe}: the kept region is not the input image"
            painted = float((ours[~kept] - baseline[~kept]).abs().max())
            assert painted > 1e-4, f"{recipe}: painted exactly as the baseline (did the recipe run?)"
            other = self.run_from_image(pipe, recipe, list(PROMPTS), [3, 4], mask_image=masks.flip(0))
            assert (other - ours).abs().max() > 1e-3, f"{recipe}: the mask changed nothing"

    def bad_inputs(self) -> list[tuple[dict[str, Any], str]]:
        return [*super().bad_inputs(), ({"mask_image": None}, "needs a `mask_image`")]
