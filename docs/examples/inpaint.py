"""Inpainting and Kontext editing under ralu, on FluxInpaintPipeline and FluxKontextPipeline: the baseline is exactly
each pipeline's own sampling; under RALU and RAS the region the mask keeps stays the input image's latents exactly,
and Kontext's reference image rides along with the generated tokens at every stage.

Runs offline on the CPU in seconds with the embedded tiny random-weight FLUX pipeline (swap in
FluxInpaintPipeline.from_pretrained(...) or FluxKontextPipeline.from_pretrained(...) and real images for real
results):

    ./dev python docs/examples/inpaint.py
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FluxInpaintPipeline, FluxKontextPipeline
from PIL import Image, ImageDraw

import ralu_core
from ralu_flux.testing import make_flux_pipeline, packed_mask


def main() -> None:
    tiny = make_flux_pipeline("tiny", seed=0)
    image = Image.linear_gradient("L").convert("RGB").resize((96, 64))  # any PIL image, tensor or array
    mask = Image.new("L", (96, 64), 0)  # white: repaint, black: keep
    ImageDraw.Draw(mask).rectangle((24, 16, 71, 47), fill=255)
    common = {"height": 64, "width": 96, "max_sequence_length": 16, "output_type": "latent"}

    inpaint = FluxInpaintPipeline.from_pipe(tiny)
    inpaint.set_progress_bar_config(disable=True)

    def painted(recipe: str | None, **extra: object) -> torch.Tensor:
        run = inpaint if recipe is None else ralu_core.accelerate(inpaint, recipe)
        generator = torch.Generator().manual_seed(0)
        out = run("a red circle", image=image, mask_image=mask, strength=0.9, generator=generator, **common, **extra)
        return out.images  # type: ignore[no-any-return]

    plain = painted(None, num_inference_steps=28)
    same = torch.equal(painted("flux-baseline", num_inference_steps=28), plain)
    print(f"flux-baseline equals FluxInpaintPipeline: {same}")
    as_tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]
    kept = packed_mask(inpaint, as_tensor, 64, 96) == 0  # where the pipeline's own mask keeps the image
    for recipe in ("ralu-flux-7x", "ras-flux"):
        print(f"{recipe}: kept region is the input image: {torch.equal(painted(recipe)[kept], plain[kept])}")

    kontext = FluxKontextPipeline.from_pipe(tiny)
    kontext.set_progress_bar_config(disable=True)
    # Kontext fits the size to max_area (1024 x 1024 by default) and resizes the reference to a preferred resolution;
    # a tiny model keeps both as given.
    edit = {**common, "max_area": 64 * 96, "_auto_resize": False}
    for recipe in ("flux-baseline", "ralu-flux-7x", "ras-flux"):
        generator = torch.Generator().manual_seed(0)
        out = ralu_core.accelerate(kontext, recipe)(image=image, prompt="make it red", generator=generator, **edit)
        print(f"Kontext under {recipe}: latents {tuple(out.images.shape)}")


if __name__ == "__main__":
    main()
