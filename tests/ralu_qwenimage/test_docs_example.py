"""docs/examples/qwenimage.py keeps working and says what docs/qwenimage.md quotes."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "qwenimage.py"


def test_the_qwenimage_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "qwenimage-baseline equals the pipeline: True",
        "ralu-qwenimage-4x: latents (2, 24, 64), 4.38x fewer FLOPs at 1024x1024 than 50 steps",
        "ras-qwenimage: latents (2, 24, 64), 1.74x fewer FLOPs at 1024x1024 than 50 steps",
    ]
