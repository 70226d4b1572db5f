"""Commands that need no model answer in about the time it takes to import torch: with every first-party
plugin installed, they import neither diffusers nor transformers (seconds each on a small machine), and
`--help` imports not even torch. The wall times are in docs/benchmarks.md section 9."""

from __future__ import annotations

import json
import subprocess
import sys

MODEL_LIBRARIES = ("diffusers", "transformers")

PROBE = """
import contextlib, io, json, sys
from ralu_core.cli import main
commands = json.loads(sys.argv[1])
codes = []
for argv in commands:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(main(argv))
        except SystemExit as exit:
            codes.append(exit.code)
print(json.dumps({"codes": codes, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
"""


def imported_by(*commands: list[str]) -> dict[str, list[str | int]]:
    """Exit codes of `commands` run in one fresh interpreter, and the modules it then holds of interest."""
    watched = (*MODEL_LIBRARIES, "torch")
    done = subprocess.run(
        [sys.executable, "-c", PROBE % (watched,), json.dumps(list(commands))],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, list[str | int]] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_commands_that_need_no_model_import_no_model_library() -> None:
    result = imported_by(
        ["recipes", "list"],
        ["recipes", "show", "ralu-flux-7x"],
        ["recipes", "validate", "ralu-flux-7x"],
        ["recipes", "validate", "ralu-sd3-3x-deepcache"],
        ["plugins"],
        ["schedule", "--recipe", "ralu-flux-7x"],
        ["schedule", "--steps", "2", "3", "5", "--ends", "0.2", "0.3", "1.0"],
        ["generate", "a red circle", "--recipe", "ralu-flux-8x"],  # refused before any model loads
    )
    assert result["codes"] == [0, 0, 0, 0, 0, 0, 0, 2]
    assert not {m.split(".")[0] for m in result["loaded"]} & set(MODEL_LIBRARIES), result["loaded"]


def test_help_imports_not_even_torch() -> None:
    result = imported_by(["--help"], ["generate", "--help"], ["bench", "--no-such-option"])
    assert result["codes"] == [0, 0, 2]
    assert result["loaded"] == []
