"""Caching with ralu: a built-in recipe, a YAML recipe that stacks caches, and a diffusers cache the user
already has, all on one FluxPipeline.

Runs offline on the CPU in seconds with `flux-shapes`, the small trained FLUX-architecture model that ships in
ralu-bench (a trained model, so that the adaptive cache has something to reuse: on random weights the first
block's output changes too much from step to step). For real weights, swap in
FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16) and drop `call`:

    ./dev python docs/examples/caching.py
"""

from __future__ import annotations

import torch
from diffusers.hooks import FirstBlockCacheConfig

import ralu_core
from ralu_bench.models import load_reference_pipeline, recommended_call
from ralu_core.recipes import load_recipe_text

# RALU 7x with a cache in each stage: Δ-DiT at half resolution, TaylorSeer in the mixed-resolution stage and
# DBCache (one front and one back block always computed) at full resolution.
STACKED = """
name: my-ralu-flux-7x-cached
model: flux
schedule: {name: nt-dm, base_shift: 3.0, shifts: [8.14, 2.86, 2.19], c: 0.0255}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 3, end: 0.3, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.2}}
  - {steps: 5, end: 1.0, transition: nt-dm-upsample, selector: all}
cache:
  - {name: delta-dit, interval: 2, stages: [0]}
  - {name: taylorseer, interval: 2, order: 1, warmup: 2, stages: [1]}
  - {name: db-cache, front: 1, back: 1, threshold: 0.4, stages: [2]}
"""


def main() -> None:
    pipe = load_reference_pipeline("flux-shapes")
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle at the top left and a blue square at the bottom right on a white background"
    call = {k: v for k, v in recommended_call("flux-shapes").items() if k != "num_inference_steps"}  # 128 x 128

    # 1. Built-in recipes from ralu-caching: the RALU paper's RALU 5x + TaylorSeer and RALU 5x + ToCa rows (6.65x
    #    and 6.50x fewer FLOPs than 50 steps on FLUX.1-dev; on this small model both lose quality, ToCa less:
    #    docs/benchmarks.md, section 7).
    for name in ("ralu-flux-5x-taylorseer", "ralu-flux-5x-toca"):
        image = ralu_core.accelerate(pipe, name)(prompt, generator=torch.Generator().manual_seed(0), **call).images[0]
        print(f"{name}: image {image.size}")

    # 2. Caches stacked in YAML, each limited to the stages where it helps.
    stacked = ralu_core.accelerate(pipe, load_recipe_text(STACKED))
    image = stacked(prompt, generator=torch.Generator().manual_seed(0), **call).images[0]
    reused, total = stacked.runtime.caches[2].cache.measured_reuse()
    print(f"stacked caches: image {image.size}; db-cache reused the middle blocks in {reused} of {total}")
    print("  transformer evaluations of its stage (2 CFG branches x 5 steps)")

    # 3. A diffusers cache the user enabled on the transformer keeps working under any RALU recipe: ralu gives
    #    it a fresh state for every token set, a context per CFG branch, and leaves it configured afterwards.
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
    image = ralu_core.accelerate(pipe, "ralu-flux-7x")(prompt, generator=torch.Generator().manual_seed(0), **call)
    print(f"user's first-block cache under ralu-flux-7x: image {image.images[0].size}")
    pipe.transformer.disable_cache()


if __name__ == "__main__":
    main()
