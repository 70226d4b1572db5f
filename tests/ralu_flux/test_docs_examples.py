"""The runnable examples in docs/ keep working."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.mark.parametrize("script", ["quickstart.py", "plugin_demo.py"])
def test_example_runs(script: str, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert "(256, 256)" in out or "(128, 128)" in out


def test_the_lora_example_shows_the_scale_and_the_fused_lora_honoured(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLES / "lora.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["ralu-flux-7x", "ras-flux", "fused LoRA, ralu-flux-7x"]
    assert all(line.endswith("at scale 0 by 0e+00") and "move by 0.00;" not in line for line in lines[:2])
    fused = float(lines[2].split(": ")[1].split(" ")[0])
    assert fused < 1e-4


def test_the_img2img_example_starts_every_recipe_from_the_image(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLES / "img2img.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "flux-baseline equals FluxImg2ImgPipeline: True",
        "ralu-flux-7x: latents (1, 24, 64)",
        "ras-flux: latents (1, 24, 64)",
    ]


def test_the_inpaint_example_keeps_the_region_and_edits_with_kontext(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLES / "inpaint.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "flux-baseline equals FluxInpaintPipeline: True",
        "ralu-flux-7x: kept region is the input image: True",
        "ras-flux: kept region is the input image: True",
        "Kontext under flux-baseline: latents (1, 24, 64)",
        "Kontext under ralu-flux-7x: latents (1, 24, 64)",
        "Kontext under ras-flux: latents (1, 24, 64)",
    ]


def test_the_distilled_example_runs_schnells_four_steps_as_ralus(capsys) -> None:  # type: ignore[no-untyped-def]
    runpy.run_path(str(EXAMPLES / "distilled.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == [
        "flux-baseline: 4 transformer passes, latents (1, 24, 64)",
        "ralu-flux-schnell: 4 transformer passes, latents (1, 24, 64)",
    ]
