"""Run RALU on ralu-bench's trained reference models and check the images with ShapeEval.

Offline, on a CPU, in about half a minute: both reference pipelines (FLUX and SD3 architectures) draw
the same held-out prompts with their baseline and their most aggressive RALU recipe, and ShapeEval
says whether each image shows the shapes its prompt names.

    ./dev python docs/examples/shapes_quickstart.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from diffusers.utils import logging as diffusers_logging

import ralu_core
from ralu_bench.models import recommended_call, reference_model_path
from ralu_bench.plugin import shapes_prompts
from ralu_bench.shapeeval import ShapeEval

MODELS = {
    "flux-shapes": (FluxPipeline, ("flux-baseline", "ralu-flux-7x")),
    "sd3-shapes": (StableDiffusion3Pipeline, ("sd3-baseline", "ralu-sd3-3x")),
}


def main(num_prompts: int = 4) -> None:
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bars for these tiny models
    judge = ShapeEval.load()
    prompts = shapes_prompts(num_prompts)  # captions of held-out scenes: never seen in training
    for name, (pipeline_class, recipes) in MODELS.items():
        pipe = pipeline_class.from_pretrained(reference_model_path(name), dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        call = recommended_call(name)  # 128 x 128, max_sequence_length=32, CFG 4, and the baseline's steps
        steps = call.pop("num_inference_steps")
        for recipe in recipes:
            fast = ralu_core.accelerate(pipe, recipe)
            extra = {"num_inference_steps": steps} if recipe.endswith("baseline") else {}
            start = time.perf_counter()
            images = np.stack(
                [
                    fast(p, generator=torch.Generator().manual_seed(i), output_type="np", **call, **extra).images[0]
                    for i, p in enumerate(prompts)
                ]
            )
            seconds = (time.perf_counter() - start) / len(prompts)
            hits = round(judge.accuracy(images, prompts) * len(prompts))  # exact (colour, kind) sets
            print(f"{name} {recipe:>14}: {seconds:.2f} s/image, ShapeEval {hits}/{len(prompts)}, {images.shape[1:]}")


if __name__ == "__main__":
    main()
