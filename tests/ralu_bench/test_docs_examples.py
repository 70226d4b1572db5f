"""The examples in docs/ that run on the trained reference models keep working."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_shapes_quickstart_runs(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "shapes_quickstart.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("ShapeEval" in line and "(128, 128, 3)" in line for line in lines)
    assert {line.split()[1].rstrip(":") for line in lines} == {
        "flux-baseline",
        "ralu-flux-7x",
        "sd3-baseline",
        "ralu-sd3-3x",
    }


def test_the_ras_example_runs(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "ras.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("image (256, 256)") == 3
    assert "stage 0: key/value and output caches" in out


def test_the_compile_example_runs(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch._dynamo.reset()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["compile.py", "eager"])
    runpy.run_path(str(EXAMPLES / "compile.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "compiled 6 blocks (eager)"  # flux-shapes: two double and four single blocks
    first, second, third = lines[1:4]
    assert first.startswith("call 0: image (128, 128)") and not first.endswith(" 0 graphs compiled")
    assert second.endswith(" 0 graphs compiled") and third.endswith(" 0 graphs compiled")
    assert all("CannyEdgeSelector" in line for line in lines[4:]) and len(lines) == 6


def test_the_caching_example_runs_and_its_adaptive_cache_reuses(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / "caching.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("image (128, 128)") == 4
    assert "ralu-flux-5x-toca: image (128, 128)" in out
    reused = re.search(r"db-cache reused the middle blocks in (\d+) of 10", out)
    assert reused is not None and int(reused.group(1)) > 0, out


def test_an_example_run_as_the_docs_say_prints_no_library_notices() -> None:
    """`./dev python docs/examples/caching.py`: no transformers notice (torchvision missing), no deprecation
    warning (`torch_dtype`), no loading bars; only the example's own lines."""
    root = EXAMPLES.parents[1]
    if not (root / ".venv" / "bin" / "python").is_file():
        pytest.skip("./dev has not set up .venv here (CI's first ./dev command does)")
    done = subprocess.run(
        ["bash", str(root / "dev"), "python", str(EXAMPLES / "caching.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 5


def test_the_tune_example_runs(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "sys.argv", ["tune.py", "tuned", "3", "4"]
    )  # 3 candidates, 4 prompts x 2 seeds: the docs 12, 6 x 3
    runpy.run_path(str(EXAMPLES / "tune.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3x: ") and "held-out PSNR" in lines[1] and lines[2] == "tuned/example.png"
    assert {"tuned-3x.yaml", "report.md", "pareto.png", "tune.json"} <= {p.name for p in (tmp_path / "tuned").iterdir()}
