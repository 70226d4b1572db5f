"""Quickstart: accelerate a FluxPipeline with a built-in recipe and compare with the baseline.

Runs offline on the CPU in seconds with the embedded tiny random-weight FLUX pipeline (its images
are noise-like; swap in FluxPipeline.from_pretrained(...) for real weights):

    ./dev python docs/examples/quickstart.py
"""

from __future__ import annotations

import time

import torch

import ralu_core
from ralu_flux.testing import make_flux_pipeline


def main() -> None:
    pipe = make_flux_pipeline("tiny", seed=0)  # or FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev")
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle and a blue square"
    size = {"height": 256, "width": 256, "max_sequence_length": 64}

    baseline = ralu_core.accelerate(pipe, "flux-baseline")  # the pipeline's own sampling, exactly
    fast = ralu_core.accelerate(pipe, "ralu-flux-7x")  # RALU: 2 + 3 + 5 steps at mixed resolution

    for name, runner, extra in (("flux-baseline", baseline, {"num_inference_steps": 50}), ("ralu-flux-7x", fast, {})):
        start = time.perf_counter()
        image = runner(prompt, generator=torch.Generator().manual_seed(0), **size, **extra).images[0]
        print(f"{name:>14}: {time.perf_counter() - start:.2f} s, image {image.size}")
        image.save(f"quickstart-{name}.png")


if __name__ == "__main__":
    main()
