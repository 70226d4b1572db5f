"""benchmarks/gpu.sh, the one script that takes every GPU number, run end to end on the CPU with the tiny
models and the eager compile backend: every recipe name it times exists, every run writes its report, and
the summary gathers them with the goals checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, resolve_recipe

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import summary  # noqa: E402


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_the_gpu_script_runs_every_recipe_and_summarizes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "RALU_BENCH_OUT": str(tmp_path),
        "RALU_BENCH_SIZE": "64",
        "RALU_BENCH_PROMPTS": "1",
        "RALU_BENCH_COMPILE": "off default",
        "RALU_BENCH_COMPILE_BACKEND": "eager",
        "RALU_BENCH_EXTRA": "--device cpu --dtype float32 --call-arg max_sequence_length=16",
        "RALU_BENCH_FLUX_MODEL": "flux-tiny",
        "RALU_BENCH_SD3_MODEL": "sd3-tiny",
        "RALU_BENCH_FLUX_SCHNELL_MODEL": "flux-tiny",
        "RALU_BENCH_QWEN_MODEL": "qwenimage-tiny",
        "RALU_BENCH_FLUX2_MODEL": "flux2-tiny",
        # DeepCache needs three blocks and sd3-tiny has two; the names of every default are checked below.
        "RALU_BENCH_SD3_RECIPES": "sd3-baseline ralu-sd3-2x ralu-sd3-3x ras-sd3 ralu-ras-sd3-3x",
    }
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "skipped.txt").exists(), (tmp_path / "skipped.txt").read_text()
    data = json.loads((tmp_path / "summary.json").read_text())
    assert set(data["runs"]) == {
        *("flux-eager", "sd3-eager", "flux-schnell-eager", "flux-compile-default", "sd3-compile-default"),
        "qwenimage-eager",
        "flux2-eager",
    }
    assert [row["recipe"] for row in data["runs"]["qwenimage-eager"]] == [
        *("qwenimage-baseline", "ralu-qwenimage-4x", "ras-qwenimage")
    ]
    assert [row["recipe"] for row in data["runs"]["flux-schnell-eager"]] == ["flux-baseline", "ralu-flux-schnell"]
    recipes = {run: [row["recipe"] for row in rows] for run, rows in data["runs"].items()}
    assert recipes["flux-eager"][0] == "flux-baseline" and "ralu-flux-5x-taylorseer" in recipes["flux-eager"]
    assert recipes["sd3-eager"] == ["sd3-baseline", "ralu-sd3-2x", "ralu-sd3-3x", "ras-sd3", "ralu-ras-sd3-3x"]
    for row in data["runs"]["flux-compile-default"] + data["runs"]["sd3-compile-default"]:
        assert row["graphs_compiled_warmup"] > 0 and row["graphs_compiled_timed"] == 0
    markdown = (tmp_path / "summary.md").read_text()
    assert "| flux-eager | ralu-flux-7x |" in markdown and "## Goals" in markdown
    assert "ralu-sd3-3x: wall / FLOPs >= 0.9" in markdown
    assert "- flux-eager, flux-baseline: none" in markdown and "- sd3-eager, ras-sd3: none" in markdown
    assert "CannyEdgeSelector" in data["host_syncs"]["flux-eager"]["ralu-flux-7x"][0]
    # The GPU-only user-stack checks ran, and say why each was skipped on a machine without CUDA.
    stack = json.loads((tmp_path / "user-stack.json").read_text())
    assert {line["status"] for line in stack["checks"]} == {"skipped"}
    assert "flux, sequential CPU offload: no CUDA device" in (tmp_path / "user-stack.txt").read_text()


def test_the_user_stack_checks_compare_offloaded_latents_where_they_can_run() -> None:
    """gpu_user_stack.py's offload checks, with model CPU offload (which runs on a CPU): every check passes."""
    import gpu_user_stack

    assert gpu_user_stack.main(["--models", "flux", "--offloads", "model"]) == 0


def test_every_recipe_the_script_names_by_default_resolves() -> None:
    script = (ROOT / "benchmarks" / "gpu.sh").read_text()
    defaults = re.findall(r'RALU_BENCH_(?:FLUX|SD3|SD35|QWEN|FLUX2)_(?:RECIPES|COMPILED):-"([^"]+)"', script)
    assert len(defaults) == 7
    registry = Registry.collect(create_plugin_manager())
    for name in {name for names in defaults for name in names.split()}:
        resolve_recipe(find_recipe(name, registry), registry)  # raises for a misspelled or broken recipe


def _report(device: str, seconds: float, efficiency: float) -> dict[str, Any]:
    rows = [
        {"recipe": "flux-baseline", "seconds_per_image": 8.0, "efficiency": 1.0},
        {"recipe": "ralu-flux-7x", "seconds_per_image": seconds, "efficiency": efficiency},
        {"recipe": "ras-flux", "seconds_per_image": 5.0, "efficiency": 0.5},
    ]
    return {"device": device, "settings": {"height": 1024, "width": 1024}, "summary": rows}


def test_goals_are_judged_per_report_and_the_time_goal_only_on_an_h100_or_indicatively_an_h200() -> None:
    met = summary.goals("flux", _report("NVIDIA H100 80GB HBM3", 1.2, 0.93))
    assert [(g["goal"], g["met"]) for g in met] == [
        ("ralu-flux-7x: wall / FLOPs >= 0.9", True),
        ("ralu-flux-7x under 1.5 s per image on an H100", True),
    ]  # ras-flux is not a RALU recipe: no efficiency goal
    missed = summary.goals("flux", _report("NVIDIA A100-SXM4-80GB", 1.2, 0.85))
    assert [g["met"] for g in missed] == [False, False] and missed[1]["note"] == "not measured on an H100"
    assert not summary.goals("flux", _report("NVIDIA H100", 1.6, 0.9))[1]["met"]
    h200 = summary.goals("flux", _report("NVIDIA H200", 1.2, 0.9))[1]
    assert h200["met"] and h200["note"] == "on an H200, not an H100: indicative"


def _device_kit_copy(tmp_path: Path) -> Path:
    """The device scripts and the packages they fingerprint, in a tree of their own."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "benchmarks", tree / "benchmarks")
    for package in ("ralu-core", "ralu-flux", "ralu-sd3", "ralu-caching"):
        shutil.copytree(ROOT / "packages" / package / "src", tree / "packages" / package / "src")
        shutil.copy(ROOT / "packages" / package / "pyproject.toml", tree / "packages" / package)
    return tree


@pytest.mark.skipif(sys.platform == "win32", reason="bash scripts")
def test_the_device_run_refuses_wheels_missing_or_older_than_the_sources(tmp_path: Path) -> None:
    """benchmarks/device/run.sh measures only the code in the tree: the wheels prepare.sh built must carry the
    fingerprint of today's sources, else it stops before installing anything (device time is scarce)."""
    tree = _device_kit_copy(tmp_path)
    env = {**os.environ, "OUT": str(tmp_path / "out")}

    def fingerprint() -> str:
        run = subprocess.run(["bash", "benchmarks/device/fingerprint.sh"], cwd=tree, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    def device_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "benchmarks/device/run.sh"], cwd=tree, env=env, capture_output=True, text=True)

    missing = device_run()
    assert missing.returncode == 2 and "run bash benchmarks/device/prepare.sh here first" in missing.stderr
    (tree / ".whl").mkdir()
    (tree / ".whl" / "SOURCES").write_text(fingerprint() + "\n")
    recipe = tree / "packages" / "ralu-flux" / "src" / "ralu_flux" / "recipes" / "ralu-flux-7x.yaml"
    recipe.write_text(recipe.read_text() + "# changed after the wheels were built\n")
    assert fingerprint() != (tree / ".whl" / "SOURCES").read_text().strip()
    stale = device_run()
    assert stale.returncode == 2 and "older than the sources" in stale.stderr
