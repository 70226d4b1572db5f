"""The script behind docs/images/canny-selection-flux-shapes.png runs on a shipped reference model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "packages" / "ralu-bench" / "scripts" / "selection_figure.py"


def test_selection_figure_draws_a_row_per_prompt(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("selection_figure", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(
        ["--model", "flux-shapes", "--recipe", "ralu-flux-4x", "--prompts", "2", "--out", str(tmp_path / "f.png")]
    )
    [first, second] = module.RecordingCanny.seen
    side = 64 * module.SCALE + 6  # a 64 px half-resolution image per panel, 3 px of margin each side
    assert np.asarray(Image.open(out)).shape == (2 * side, 3 * side, 3)
    for record in (first, second):
        assert len(record["old"]) == len(record["new"]) == int(64 * 0.3)  # ralu-flux-4x upsamples 30 % of 64
    assert not np.array_equal(first["old_edges"], first["new_edges"])  # the stretch finds more edges
