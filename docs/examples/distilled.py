"""RALU on a distilled few-step model: FLUX.1-schnell's 4 steps as RALU's 1 + 1 + 2 (`ralu-flux-schnell`).

Runs offline on the CPU in seconds with a tiny random-weight pipeline made as FLUX.1-schnell is (no guidance
embedding, a static shift of 1.0); swap in FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-schnell") for
real images:

    ./dev python docs/examples/distilled.py
"""

from __future__ import annotations

import torch

import ralu_core
from ralu_flux.testing import make_flux_schnell_pipeline


def main() -> None:
    pipe = make_flux_schnell_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    steps: list[int] = []
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: steps.append(1), with_kwargs=True)
    call = {"height": 64, "width": 96, "max_sequence_length": 16, "output_type": "latent"}
    for recipe in ("flux-baseline", "ralu-flux-schnell"):
        steps.clear()
        fast = ralu_core.accelerate(pipe, recipe)
        extra = {"num_inference_steps": 4} if recipe == "flux-baseline" else {}
        out = fast("a red fox", generator=torch.Generator().manual_seed(0), **call, **extra)
        print(f"{recipe}: {len(steps)} transformer passes, latents {tuple(out.images.shape)}")


if __name__ == "__main__":
    main()
