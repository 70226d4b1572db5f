"""Qwen-Image with ralu: the baseline, RALU and RAS on a QwenImagePipeline with true CFG, and what each saves at
full size.

Runs offline on a CPU in seconds: the pipeline is ralu-qwenimage's tiny random-weight one (its images are noise;
pass a real QwenImagePipeline, e.g. `QwenImagePipeline.from_pretrained("Qwen/Qwen-Image")`, for pictures). Run it
with `./dev python docs/examples/qwenimage.py`.
"""

from __future__ import annotations

import torch

import ralu_core
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_qwenimage.flops_profile import QwenImageFlopsProfile
from ralu_qwenimage.testing import make_qwenimage_pipeline


def main() -> None:
    pipe = make_qwenimage_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    prompt = ["a red circle", "a blue square on the grass"]
    call = {"height": 64, "width": 96, "negative_prompt": " ", "true_cfg_scale": 4.0, "output_type": "latent"}

    def seeds() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in (0, 1)]

    plain = pipe(prompt, generator=seeds(), num_inference_steps=50, **call).images
    baseline = ralu_core.accelerate(pipe, "qwenimage-baseline")(prompt, generator=seeds(), **call).images
    print(f"qwenimage-baseline equals the pipeline: {torch.equal(plain, baseline)}")

    registry = Registry.collect(create_plugin_manager())
    profile = QwenImageFlopsProfile.from_source("qwen-image")
    full = recipe_cost(resolve_recipe(find_recipe("qwenimage-baseline", registry), registry), profile, 1024, 1024)
    for recipe in ("ralu-qwenimage-4x", "ras-qwenimage"):
        latents = ralu_core.accelerate(pipe, recipe)(prompt, generator=seeds(), **call).images
        cost = recipe_cost(resolve_recipe(find_recipe(recipe, registry), registry), profile, 1024, 1024)
        speedup = full.total.tflops(False) / cost.total.tflops(False)
        print(f"{recipe}: latents {tuple(latents.shape)}, {speedup:.2f}x fewer FLOPs at 1024x1024 than 50 steps")


if __name__ == "__main__":
    main()
