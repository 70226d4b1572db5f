"""Draw which half-resolution tokens `canny-edge` upsamples at RALU's first transition.

For each prompt: the decoded clean estimate the selector sees, then the tokens picked (red) by the
paper's literal pipeline with ties taken in grid order (what ralu did before issue 11: fixed Canny
thresholds on the raw grey image, top rows first), and by today's selector (contrast stretched, the
rest ranked by gradient, ties drawn from the call's generator). Edge pixels are drawn in blue.

    python packages/ralu-bench/scripts/selection_figure.py --model flux-shapes --recipe ralu-flux-4x \
        --prompts 6 --out docs/images/canny-selection-flux-shapes.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from PIL import Image, ImageDraw

from ralu_bench.models import load_reference_pipeline, recommended_call
from ralu_core import accelerate
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.plugins.hookspecs import hookimpl
from ralu_core.recipes import find_recipe
from ralu_core.sampling.tokens import HALF, gather_tokens
from ralu_core.strategies.base import SelectionRequest
from ralu_core.strategies.selectors import CannyEdgeSelector

SCALE = 4  # pixels of the figure per pixel of the decoded half-resolution image


class RecordingCanny(CannyEdgeSelector):
    """canny-edge, under its own name, that also keeps what it saw and what the old rule would have picked."""

    name: ClassVar[str] = "canny-edge-recorded"
    seen: ClassVar[list[dict[str, Any]]] = []

    def select(self, request: SelectionRequest) -> torch.Tensor:
        picks = super().select(request)
        literal = CannyEdgeSelector(CannyEdgeSelector.Config(ratio=self.config.ratio, stretch=False))
        old_scores = literal.ranking(request)[0]
        count = self.planned_count(request.candidates.shape[1])
        # ralu before issue 11: the top `count` by literal edge pixels, ties to the lower grid position.
        old = torch.sort(torch.sort(old_scores, dim=1, descending=True, stable=True).indices[:, :count], 1).values
        assert request.clean_estimate is not None
        images = request.decode(request.render(request.clean_estimate, HALF))
        for b in range(images.shape[0]):
            RecordingCanny.seen.append(
                {
                    "image": images[b].permute(1, 2, 0).clamp(0, 1).cpu().numpy(),
                    "cells": request.state.cells[b].cpu(),
                    "old": gather_tokens(request.candidates, old)[b].cpu(),
                    "new": gather_tokens(request.candidates, picks)[b].cpu(),
                    "old_edges": literal.edge_map(images[b : b + 1])[0].numpy(),
                    "new_edges": self.edge_map(images[b : b + 1])[0].numpy(),
                }
            )
        return picks


def panel(record: dict[str, Any], which: str | None, grid_rows: int) -> Image.Image:
    image = (record["image"] * 255).round().astype(np.uint8)
    if which is not None:
        edges = record[f"{which}_edges"] > 0
        image = image.copy()
        image[edges] = (0, 90, 255)
    height, width = image.shape[:2]
    canvas = Image.fromarray(image).resize((width * SCALE, height * SCALE), Image.NEAREST)
    if which is None:
        return canvas
    draw = ImageDraw.Draw(canvas)
    cell = height * SCALE / grid_rows  # one full-resolution cell; a half-resolution token covers 2 x 2
    for index in record[which].tolist():
        row, col = record["cells"][index].tolist()
        box = (col * cell, row * cell, (col + 2) * cell - 1, (row + 2) * cell - 1)
        draw.rectangle(box, outline=(230, 0, 0), width=2)
    return canvas


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux-shapes")
    parser.add_argument("--recipe", default="ralu-flux-4x")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("canny-selection.png"))
    ns = parser.parse_args(argv)

    class Plugin:
        @hookimpl
        def ralu_register_token_selectors(self, register: Any) -> None:
            register(RecordingCanny)

    registry = Registry.collect(create_plugin_manager(plugins=[Plugin()]))
    prompts = registry.prompt_sets["shapes"].obj(ns.prompts)
    recipe = find_recipe(ns.recipe, registry)
    recorded = tuple(
        attrs.evolve(s, selector=attrs.evolve(s.selector, name=RecordingCanny.name))
        if s.selector is not None and s.selector.name == "canny-edge"
        else s
        for s in recipe.stages
    )
    pipe = load_reference_pipeline(ns.model)
    pipe.set_progress_bar_config(disable=True)
    call = {k: v for k, v in recommended_call(ns.model).items() if k != "num_inference_steps"}
    fast = accelerate(pipe, attrs.evolve(recipe, stages=recorded), plugin_manager=registry.pm)
    for prompt in prompts:
        fast(prompt, generator=torch.Generator().manual_seed(ns.seed), output_type="latent", **call)
    grid_rows = int(call["height"]) // (pipe.vae_scale_factor * 2)
    rows = []
    for record in RecordingCanny.seen:
        panels = [panel(record, which, grid_rows) for which in (None, "old", "new")]
        rows.append(
            np.concatenate([np.pad(np.asarray(p), ((3, 3), (3, 3), (0, 0)), constant_values=255) for p in panels], 1)
        )
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(ns.out)
    print(ns.out)
    return Path(ns.out)


if __name__ == "__main__":
    main()
