"""Lumina-Next with ralu: the baseline, RALU and RAS on a LuminaPipeline, and what each saves at full size.

Runs offline on a CPU in seconds: the pipeline is ralu-lumina's tiny random-weight one (its images are noise;
pass a real LuminaPipeline, e.g. `LuminaPipeline.from_pretrained("Alpha-VLLM/Lumina-Next-SFT-diffusers")`, for
pictures). Run it with `./dev python docs/examples/lumina.py`.
"""

from __future__ import annotations

import torch

import ralu_core
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_lumina.flops_profile import LuminaFlopsProfile
from ralu_lumina.testing import make_lumina_pipeline


def main() -> None:
    pipe = make_lumina_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    prompt = ["a red circle", "a blue square"]
    call = {"height": 64, "width": 96, "guidance_scale": 4.0, "clean_caption": False, "output_type": "latent"}

    def seeds() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (0, 1)]

    plain = pipe(prompt, generator=seeds(), num_inference_steps=30, **call).images
    baseline = ralu_core.accelerate(pipe, "lumina-baseline")(prompt, generator=seeds(), **call).images
    print(f"lumina-baseline equals the pipeline: {torch.equal(plain, baseline)}")

    registry = Registry.collect(create_plugin_manager())
    profile = LuminaFlopsProfile.from_source("lumina-next-sft")
    full = recipe_cost(resolve_recipe(find_recipe("lumina-baseline", registry), registry), profile, 1024, 1024)
    for recipe in ("ralu-lumina-4x", "ras-lumina"):
        latents = ralu_core.accelerate(pipe, recipe)(prompt, generator=seeds(), **call).images
        cost = recipe_cost(resolve_recipe(find_recipe(recipe, registry), registry), profile, 1024, 1024)
        speedup = full.total.tflops(False) / cost.total.tflops(False)
        print(f"{recipe}: latents {tuple(latents.shape)}, {speedup:.2f}x fewer FLOPs at 1024x1024 than 30 steps")


if __name__ == "__main__":
    main()
