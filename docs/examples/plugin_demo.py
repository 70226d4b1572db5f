"""Use a third-party region selector from a recipe, without installing it.

Installed plugins are found through the `ralu` entry-point group; for a quick experiment you can
also hand a plugin module to the plugin manager in code:

    ./dev python docs/examples/plugin_demo.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import ralu_core
from ralu_flux.testing import make_flux_pipeline

sys.path.insert(0, str(Path(__file__).parent / "ralu-center-focus" / "src"))
import ralu_center_focus  # the example plugin next to this file

RECIPE = """
name: centre-first-7x
description: RALU 7x with the centre of the image upsampled first instead of Canny edges.
model: flux
schedule: {name: nt-dm, base_shift: 3.0}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 3, end: 0.3, transition: nt-dm-upsample, selector: {name: center-focus, ratio: 0.2, width: 0.3}}
  - {steps: 5, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


def main() -> None:
    pm = ralu_core.create_plugin_manager(plugins=[ralu_center_focus])
    pipe = make_flux_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    fast = ralu_core.accelerate(pipe, ralu_core.load_recipe_text(RECIPE), plugin_manager=pm)
    image = fast("a green triangle", height=128, width=128, generator=torch.Generator().manual_seed(0)).images[0]
    print(f"{fast.recipe.name}: {image.size}")


if __name__ == "__main__":
    main()
