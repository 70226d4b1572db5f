"""The selection made visible: per stage, which cells are computed at full resolution, recorded by an
observer plugin and drawn over the image."""

from __future__ import annotations

import torch
from PIL import Image

from ralu_core import accelerate
from ralu_core.measurement.selection_view import SelectionRecorder, full_resolution_map, selection_figure
from ralu_core.recipes import load_recipe_text
from ralu_core.sampling.tokens import TokenGrid, TokenState, downsample_nearest
from ralu_core.testing import ToyPipeline, seeded_generators

RALU = """
name: toy-ralu
schedule: {name: nt-dm, base_shift: 3.0}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 3, end: 0.3, transition: nt-dm-upsample, selector: {name: random, ratio: 0.25}}
  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


def test_a_half_resolution_token_covers_two_by_two_cells() -> None:
    grid = TokenGrid(rows=4, cols=6, channels=1, patch=1)
    state = downsample_nearest(TokenState.full_resolution(torch.zeros(2, 24, 1), grid))
    assert not full_resolution_map(state).any()
    full = TokenState.full_resolution(torch.zeros(2, 24, 1), grid)
    assert full_resolution_map(full).all() and full_resolution_map(full).shape == (2, 4, 6)


def test_the_recorder_sees_each_stages_selection_per_image(toy_pm) -> None:  # type: ignore[no-untyped-def]
    recorder = SelectionRecorder()
    toy_pm.register(recorder)
    fast = accelerate(ToyPipeline(), load_recipe_text(RALU), plugin_manager=toy_pm)
    fast(["a", "b"], height=64, width=96, generator=seeded_generators(0, 1))  # a 8 x 12 grid, 24 half tokens
    first, mixed, last = recorder.maps
    assert first.shape == (2, 8, 12) and not first.any() and last.all()
    assert (mixed.sum(dim=(1, 2)) == 6 * 4).all()  # 25 % of 24 half tokens upsampled, 4 cells each
    assert not torch.equal(mixed[0], mixed[1])  # selection is per image (random, two seeds)
    assert [m.shape for m in recorder.of_image(1)] == [(8, 12)] * 3
    figure = selection_figure(Image.new("RGB", (96, 64), "white"), recorder.of_image(0))
    assert figure.size[1] > 64 and figure.size[0] >= 3 * 96
    recorder.clear()
    assert recorder.maps == []
