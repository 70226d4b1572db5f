"""A LoRA under ralu: loaded from a file (``load_lora_weights``), scaled per call, then fused. The recipes take
the pipeline as the user made it, LoRA included.

Runs offline on the CPU in seconds with the embedded tiny random-weight FLUX pipeline and a random LoRA written
to a file (swap in FluxPipeline.from_pretrained(...) and your own LoRA for real images):

    ./dev python docs/examples/lora.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import ralu_core
from ralu_core.testing.lora import random_lora
from ralu_flux.testing import make_flux_pipeline

PROMPTS = ["a red circle", "a blue square"]
CALL = {"height": 64, "width": 96, "max_sequence_length": 16, "output_type": "latent"}


def latents(pipe: Any, recipe: str | None, **extra: Any) -> torch.Tensor:
    """Two images' final latents, one seed each; `recipe` None: the plain pipeline."""
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    run = pipe if recipe is None else ralu_core.accelerate(pipe, recipe)
    return run(PROMPTS, generator=generators, **CALL, **extra).images  # type: ignore[no-any-return]


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def main() -> None:
    pipe = make_flux_pipeline("tiny", seed=0)  # or FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev")
    pipe.set_progress_bar_config(disable=True)
    before = {recipe: latents(pipe, recipe) for recipe in ("ralu-flux-7x", "ras-flux")}

    with tempfile.TemporaryDirectory() as folder:  # a LoRA file, as a user downloads one
        save_file(random_lora(pipe.transformer, rank=4, seed=0), str(Path(folder) / "style.safetensors"))
        pipe.load_lora_weights(folder, weight_name="style.safetensors", adapter_name="style")

    for recipe, without in before.items():
        full = latents(pipe, recipe)
        off = latents(pipe, recipe, joint_attention_kwargs={"scale": 0.0})
        moved, at_zero = gap(full, without), gap(off, without)
        print(f"{recipe}: with the LoRA the latents move by {moved:.2f}; at scale 0 by {at_zero:.0e}")
    unfused = latents(pipe, "ralu-flux-7x")
    pipe.fuse_lora()  # the LoRA folded into the weights
    print(f"fused LoRA, ralu-flux-7x: {gap(latents(pipe, 'ralu-flux-7x'), unfused):.0e} from the unfused one")


if __name__ == "__main__":
    main()
