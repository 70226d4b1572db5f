"""Image-to-image under ralu: FluxImg2ImgPipeline with the baseline (exactly the pipeline's own img2img), RALU
and RAS, each starting from the input image at the sigma `strength` leaves.

Runs offline on the CPU in seconds with the embedded tiny random-weight FLUX pipeline (swap in
FluxImg2ImgPipeline.from_pretrained(...) and a real image for real results):

    ./dev python docs/examples/img2img.py
"""

from __future__ import annotations

import torch
from diffusers import FluxImg2ImgPipeline
from PIL import Image

import ralu_core
from ralu_flux.testing import make_flux_pipeline


def main() -> None:
    pipe = FluxImg2ImgPipeline.from_pipe(make_flux_pipeline("tiny", seed=0))
    pipe.set_progress_bar_config(disable=True)
    image = Image.linear_gradient("L").convert("RGB").resize((96, 64))  # any PIL image, tensor or array
    call = {"image": image, "strength": 0.8, "height": 64, "width": 96, "max_sequence_length": 16}

    def latents(recipe: str | None, **extra: object) -> torch.Tensor:
        run = pipe if recipe is None else ralu_core.accelerate(pipe, recipe)
        out = run("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent", **call, **extra)
        return out.images  # type: ignore[no-any-return]

    same = torch.equal(latents("flux-baseline", num_inference_steps=28), latents(None, num_inference_steps=28))
    print(f"flux-baseline equals FluxImg2ImgPipeline: {same}")
    for recipe in ("ralu-flux-7x", "ras-flux"):
        print(f"{recipe}: latents {tuple(latents(recipe).shape)}")


if __name__ == "__main__":
    main()
