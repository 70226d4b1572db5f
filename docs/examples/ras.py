"""RAS with ralu: a built-in recipe, RAS inside RALU, and a recipe of your own with a decreasing ratio on
SD3.5, reporting the memory its key/value cache takes.

Runs offline on the CPU in seconds with the embedded tiny random-weight pipelines (their images are
noise-like; swap in FluxPipeline/StableDiffusion3Pipeline.from_pretrained(...) for real weights):

    ./dev python docs/examples/ras.py
"""

from __future__ import annotations

import torch

import ralu_core
from ralu_core.plugins import create_plugin_manager
from ralu_core.plugins.hookspecs import hookimpl
from ralu_core.recipes import load_recipe_text
from ralu_core.sampling.events import StageEvent
from ralu_flux.testing import make_flux_pipeline
from ralu_sd3.testing import make_sd3_pipeline

# RAS over a 20-step call: 3 dense steps, a dense reset at step 10, and the share of tokens computed at
# the sparse steps going from 0.5 down to 0.25 (RAS's dynamic schedule).
DYNAMIC = """
name: my-ras-dynamic
model: sd3
schedule: uniform
stages:
  - level: 0
    step_tokens: {name: ras-focus, ratio: 0.5, ratio_end: 0.25, dense_warmup: 3, dense_steps: [10]}
    inactive: kv-cache
"""


class CacheMemory:
    """An observer plugin: what the token-level caches held at the end of each stage."""

    @hookimpl
    def ralu_on_stage_end(self, event: StageEvent) -> None:
        print(f"  stage {event.stage}: key/value and output caches {event.token_cache_bytes / 2**10:.0f} KiB")


def main() -> None:
    flux = make_flux_pipeline("tiny", seed=0)  # or FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev")
    flux.set_progress_bar_config(disable=True)
    prompt = "a red circle and a blue square"
    call = {"height": 256, "width": 256, "max_sequence_length": 64}

    # 1. The built-in RAS recipe: 28 steps, half the tokens computed after 4 dense steps, resets at 12 and 20.
    image = ralu_core.accelerate(flux, "ras-flux")(prompt, generator=torch.Generator().manual_seed(0), **call)
    print(f"ras-flux: image {image.images[0].size}")

    # 2. RAS inside RALU's full-resolution stage.
    fast = ralu_core.accelerate(flux, "ralu-ras-flux-7x")
    image = fast(prompt, generator=torch.Generator().manual_seed(0), **call)
    print(f"ralu-ras-flux-7x: image {image.images[0].size}")

    # 3. Your own schedule, on SD3.5 (per-head q/k norms, a second attention), with an observer plugin.
    sd35 = make_sd3_pipeline("sd35-tiny", seed=0)  # or StableDiffusion3Pipeline.from_pretrained(...)
    sd35.set_progress_bar_config(disable=True)
    manager = create_plugin_manager(plugins=[CacheMemory()])
    dynamic = ralu_core.accelerate(sd35, load_recipe_text(DYNAMIC), plugin_manager=manager)
    print("my-ras-dynamic on SD3.5:")
    image = dynamic(prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=20, **call)
    print(f"my-ras-dynamic: image {image.images[0].size}")


if __name__ == "__main__":
    main()
