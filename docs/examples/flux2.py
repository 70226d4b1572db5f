"""FLUX.2 with ralu: the baseline, RALU and RAS on a Flux2Pipeline, and what each saves at full size.

Runs offline on a CPU in seconds: the pipeline is ralu-flux2's tiny random-weight one (its images are noise; pass
a real Flux2Pipeline, e.g. `Flux2Pipeline.from_pretrained("black-forest-labs/FLUX.2-dev")`, for pictures). Run it
with `./dev python docs/examples/flux2.py`. Flux2Pipeline takes reference images first: the prompt goes by name.
"""

from __future__ import annotations

import torch

import ralu_core
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_flux2.flops_profile import Flux2FlopsProfile
from ralu_flux2.testing import make_flux2_pipeline


def main() -> None:
    pipe = make_flux2_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    prompt = ["a red circle", "a blue square on the grass"]
    call = {"height": 64, "width": 96, "max_sequence_length": 64, "output_type": "latent"}

    def seeds() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (0, 1)]

    plain = pipe(prompt=prompt, generator=seeds(), num_inference_steps=50, **call).images
    baseline = ralu_core.accelerate(pipe, "flux2-baseline")(prompt=prompt, generator=seeds(), **call).images
    print(f"flux2-baseline equals the pipeline: {torch.equal(plain, baseline)}")

    registry = Registry.collect(create_plugin_manager())
    profile = Flux2FlopsProfile.from_source("flux2-dev")
    full = recipe_cost(resolve_recipe(find_recipe("flux2-baseline", registry), registry), profile, 1024, 1024)
    for recipe in ("ralu-flux2-4x", "ras-flux2"):
        latents = ralu_core.accelerate(pipe, recipe)(prompt=prompt, generator=seeds(), **call).images
        cost = recipe_cost(resolve_recipe(find_recipe(recipe, registry), registry), profile, 1024, 1024)
        speedup = full.total.tflops(False) / cost.total.tflops(False)
        print(f"{recipe}: latents {tuple(latents.shape)}, {speedup:.2f}x fewer FLOPs at 1024x1024 than 50 steps")


if __name__ == "__main__":
    main()
