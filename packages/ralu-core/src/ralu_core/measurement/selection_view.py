"""Which tokens a recipe's selectors chose, made visible: an observer that keeps each stage's token levels,
and a picture of them over the generated image (``ralu generate --save-selection``).

A transition's selector decides which half-resolution tokens become full resolution; what it chose is
exactly which cells the next stage holds at full resolution. So the observer needs nothing from the
selector: at the end of each stage (``ralu_on_stage_end``) it records, per image, a map of the
full-resolution grid with True where the cell is computed at full resolution. The maps of a mixed stage
show the selection; the first and last stages of a RALU recipe are all half and all full resolution.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ralu_core.plugins.hookspecs import hookimpl
from ralu_core.sampling.events import StageEvent
from ralu_core.sampling.tokens import FULL, TokenState

__all__ = ["SelectionRecorder", "full_resolution_map", "selection_figure"]

MIN_PANEL = 256
"""Pixels of a figure panel's longer side at least."""


def full_resolution_map(state: TokenState) -> torch.Tensor:
    """(B, rows, cols) bool on the CPU: True where a full-resolution grid cell is covered by a full-resolution
    token. A token of level L covers 2**L x 2**L cells from its top-left cell."""
    grid = state.grid
    covered = torch.zeros(state.batch_size, grid.rows, grid.cols, dtype=torch.bool)
    cells, levels = state.cells.cpu(), state.levels.cpu()
    for image in range(state.batch_size):
        full = levels[image] == FULL
        rows, cols = cells[image][full].unbind(-1)
        covered[image, rows, cols] = True
    return covered


@attrs.define
class SelectionRecorder:
    """A plugin that observes a run: `maps[k]` is stage k's `full_resolution_map` (B, rows, cols).

    Register it on the plugin manager of an accelerated pipeline (``fast.plugin_manager.register(recorder)``)
    or hand it to `create_plugin_manager(plugins=[recorder])`; `clear()` between calls."""

    maps: list[torch.Tensor] = attrs.field(factory=list)

    @hookimpl
    def ralu_on_stage_end(self, event: StageEvent) -> None:
        self.maps.append(full_resolution_map(event.state))

    def clear(self) -> None:
        self.maps.clear()

    def of_image(self, index: int) -> list[torch.Tensor]:
        """Image `index`'s (rows, cols) map of every stage."""
        return [stage_maps[index] for stage_maps in self.maps]


def selection_figure(image: Any, maps: list[torch.Tensor]) -> Any:
    """A PIL image: one panel per stage, the generated `image` with the cells of that stage's half-resolution
    tokens darkened, so the full-resolution ones (a transition's selection) stand out, labelled with the
    stage and its share of full-resolution cells."""
    import numpy as np
    from PIL import Image, ImageDraw

    rgb = image.convert("RGB")
    scale = max(1, MIN_PANEL // max(rgb.size))  # small images drawn larger, pixels kept sharp
    rgb = rgb.resize((rgb.size[0] * scale, rgb.size[1] * scale), Image.Resampling.NEAREST)
    width, height = rgb.size
    label_height = 14
    figure = Image.new("RGB", (len(maps) * (width + 4), height + label_height), "white")
    base = torch.from_numpy(np.asarray(rgb).copy()).float()
    for stage, cells in enumerate(maps):
        mask = F.interpolate(cells[None, None].float(), size=(height, width), mode="nearest")[0, 0].bool()
        shade = torch.where(mask[..., None], base, base * 0.3 + 40)
        panel = Image.fromarray(shade.clamp(0, 255).to(torch.uint8).numpy())
        left = stage * (width + 4)
        figure.paste(panel, (left, label_height))
        share = float(cells.float().mean())
        ImageDraw.Draw(figure).text((left + 2, 1), f"stage {stage}: {share:.0%} full", fill="black")
    return figure
