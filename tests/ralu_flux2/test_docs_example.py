"""docs/examples/flux2.py keeps working and says what docs/flux2.md quotes."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "flux2.py"


def test_the_flux2_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "flux2-baseline equals the pipeline: True",
        "ralu-flux2-4x: latents (2, 24, 128), 4.20x fewer FLOPs at 1024x1024 than 50 steps",
        "ras-flux2: latents (2, 24, 128), 1.64x fewer FLOPs at 1024x1024 than 50 steps",
    ]
