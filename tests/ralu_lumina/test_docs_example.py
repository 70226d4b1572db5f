"""docs/examples/lumina.py keeps working and says what docs/lumina.md quotes."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "lumina.py"


def test_the_lumina_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "lumina-baseline equals the pipeline: True",
        "ralu-lumina-4x: latents (2, 4, 8, 12), 4.13x fewer FLOPs at 1024x1024 than 30 steps",
        "ras-lumina: latents (2, 4, 8, 12), 1.64x fewer FLOPs at 1024x1024 than 30 steps",
    ]
