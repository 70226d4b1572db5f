"""benchmarks/taylorseer_carry.py: the measurement behind TaylorSeer's reset at every stage change runs, and
its token map check holds (stage 1's features carried to stage 2's tokens are closer to them than shuffled)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "taylorseer_carry.py"


def test_the_carry_measurement_runs_and_its_map_is_right(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--num-prompts", "1"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    medians = dict(re.findall(r"^(.+): relative error, median ([0-9.]+)", capsys.readouterr().out, re.MULTILINE))
    assert set(medians) == {
        "reset, step 3",
        "reset, step 4",
        "carry, step 1",
        "carry, step 2",
        "reuse, step 1",
        "reuse, step 2",
        "check: carried features",
        "check: shuffled",
    }
    assert float(medians["check: carried features"]) < float(medians["check: shuffled"])
