"""The shipped reference pipelines: plain diffusers folders that load offline, generate, and are the
default model of ``ralu generate``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

from ralu_bench.models import REFERENCE_MODELS, recommended_call, reference_model_path, shapes_prompt_note
from ralu_bench.plugin import shapes_prompts
from ralu_bench.shapeeval import ShapeEval
from ralu_core import accelerate
from ralu_core.cli import main
from ralu_core.measurement.accounting import recipe_cost
from ralu_core.measurement.bench import LABEL_WIDTH
from ralu_core.plugins import Registry, create_plugin_manager

PROMPT = "a red circle at the top left and a blue square at the bottom right on a white background"
CONTROLS = {  # fewer-step baseline -> the RALU recipe it controls for at equal FLOPs
    "flux-shapes": {
        "flux-baseline-7steps": "ralu-flux-7x",
        "flux-baseline-10steps": "ralu-flux-5x",
        "flux-baseline-12steps": "ralu-flux-4x",
    },
    "sd3-shapes": {
        "sd3-baseline-9steps": "ralu-sd3-3x",
        "sd3-baseline-14steps": "ralu-sd3-2x",
        "sd3-baseline-7steps": "ralu-sd3-3x-deepcache",
    },
}
CASES = {"flux-shapes": (FluxPipeline, "ralu-flux-7x"), "sd3-shapes": (StableDiffusion3Pipeline, "ralu-sd3-3x")}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _load(name: str) -> Any:
    pipeline_class, _ = CASES[name]
    pipe = pipeline_class.from_pretrained(reference_model_path(name), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_all_shipped_weights_fit_the_budget() -> None:
    weights = Path(str(reference_model_path("flux-shapes"))).parent
    total = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"shipped weights take {total / 2**20:.1f} MiB, over the 30 MiB budget"
    assert set(REFERENCE_MODELS) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_pipeline_loads_offline_and_generates(name: str, offline: None) -> None:
    pipe = _load(name)
    assert type(pipe) is CASES[name][0] and pipe.transformer.dtype == torch.float32
    call = recommended_call(name)
    assert call["height"] == call["width"] == 128 and call["max_sequence_length"] == 32
    call["num_inference_steps"] = 6

    def generate(target: Any, **overrides: Any) -> np.ndarray:
        kwargs = {**call, **overrides}
        return target(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **kwargs).images

    plain = generate(pipe)
    fast = generate(accelerate(pipe, CASES[name][1]), num_inference_steps=None)
    for images in (plain, fast):
        assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()
    assert np.array_equal(fast, generate(accelerate(pipe, CASES[name][1]), num_inference_steps=None))
    # A trained model draws flat shapes on a plain background, not noise: most pixels sit in flat areas.
    flatness = np.mean(np.abs(np.diff(plain[0], axis=0)).max(axis=-1) < 0.02)
    assert flatness > 0.8


def test_ralu_generate_defaults_to_the_flux_reference_model(capsys, tmp_path, offline) -> None:  # type: ignore[no-untyped-def]
    registry = Registry.collect(create_plugin_manager())
    assert registry.models["flux-shapes"].obj.default and registry.models["flux-shapes"].obj.adapter == "flux"
    out = tmp_path / "shape.png"
    assert main(["generate", PROMPT, "--out", str(out)]) == 0
    stderr = capsys.readouterr().err
    assert "flux-shapes is ralu-bench's small FLUX-architecture reference model" in stderr
    assert "never saw" not in stderr  # a prompt in the model's own words gets no warning
    assert "recipe ralu-flux-7x" in stderr and Image.open(out).size == (128, 128)


def test_the_note_names_the_words_a_reference_model_never_saw() -> None:
    note = shapes_prompt_note(["a cat on a sofa", "two red circles and a CAT"])
    assert note.startswith("It never saw the words 'cat', 'sofa', 'two', so the image will be meaningless")
    assert "e.g. 'a red circle at the top left" in note
    assert shapes_prompt_note([PROMPT, "three blue squares"]).startswith("It never saw the words 'three', so")
    assert shapes_prompt_note(["a pink diamond in the center on a gradient background from black to white"]) == ""
    many = shapes_prompt_note([" ".join(f"word{c}" for c in "abcdefghij")])
    assert "'worda'" in many and "and 2 more" in many


def test_ralu_bench_on_a_reference_model_writes_every_output(tmp_path, offline) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report"
    argv = ["bench", "--model", "flux-shapes", "--recipes", "flux-baseline-7steps", "ralu-flux-7x"]
    assert main([*argv, "--prompt-set", "shapes", "--num-prompts", "2", "--warmup", "0", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "grid.png", "speed_quality.png"}
    report = json.loads((out / "report.json").read_text())
    ralu = next(row for row in report["summary"] if row["recipe"] == "ralu-flux-7x")
    for metric in ("psnr", "ssim", "edge_psnr", "shapeeval", "shapeeval_jaccard"):
        assert math.isfinite(ralu[metric]), metric
    width, height = Image.open(out / "grid.png").size
    assert ralu["speedup_flops_all"] == pytest.approx(1.0, abs=0.04)  # the 7-step control costs what RALU does
    assert width == LABEL_WIDTH + 2 * 132 and 10 <= height - 2 * 132 <= 30  # prompt labels, two recipes, a header
    assert "LPIPS skipped" in (out / "report.md").read_text()  # its weights cannot be had offline: said, not hidden


@pytest.mark.parametrize("name", sorted(CASES))
def test_fewer_step_controls_spend_the_flops_of_their_ralu_recipe(name: str) -> None:
    """The equal-FLOPs controls of the findings are what their names claim, for the model as it is called."""
    pipe = _load(name)
    call = recommended_call(name)
    profile = accelerate(pipe, CASES[name][1]).adapter.pipeline_flops_profile(pipe, call)  # as `ralu bench` counts

    def tflops(recipe: str) -> float:
        runtime = accelerate(pipe, recipe).runtime
        return recipe_cost(runtime, profile, call["height"], call["width"]).total.tflops(True)

    for control, target in CONTROLS[name].items():
        assert tflops(control) / tflops(target) == pytest.approx(1.0, abs=0.04), (control, target)


SHAPEEVAL_FLOOR = {"flux-shapes": 13 / 16, "sd3-shapes": 14 / 16}
"""Exact-set ShapeEval accuracy the shipped baselines must keep on the first 16 held-out prompts, where they
scored 15/16 and 16/16 as this test samples them (28 steps, one batch of 16, seed 0; the 50-step baselines
of docs/benchmarks.md section 6 score 0.885 and 0.948 on 96 prompts). Slack of two images for
floating-point differences between CPUs. Both floors are above the 70 % goal; the CPU-trained models these
replaced (8/16 and 2/16) would fail them."""


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_baseline_draws_the_shapes_its_prompts_name(name: str, offline: None) -> None:
    pipe = _load(name)
    prompts = shapes_prompts(16)
    call = {**recommended_call(name), "negative_prompt": [""] * len(prompts)}
    images = pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="np", **call).images
    accuracy = ShapeEval.load().accuracy((np.asarray(images) * 255).round().astype(np.uint8), prompts)
    assert accuracy >= SHAPEEVAL_FLOOR[name], f"{name}: ShapeEval {accuracy:.3f}"


@pytest.mark.parametrize("name", ["flux-shapes", "sd3-shapes"])
def test_named_models_size_rules_are_read_from_their_folders_before_loading(name: str) -> None:
    from ralu_core.cli.model_sources import resolve_model_source

    source = resolve_model_source(Registry.collect(create_plugin_manager()), name)
    assert source.kind == "named" and source.folder is not None
    assert source.size_rule(1) is not None and source.size_rule(1)[0] == 16  # VAE factor 4 x patch 2 x 2


def test_flops_takes_a_reference_model_by_name(capsys) -> None:  # type: ignore[no-untyped-def]
    """`ralu flops --model flux-shapes` counts the configs in its folder, as `--model FOLDER` does."""
    from ralu_core.cli import main
    from ralu_core.plugins import Registry, create_plugin_manager

    folder = Registry.collect(create_plugin_manager()).models["flux-shapes"].obj.folder
    counts = []
    for model in ("flux-shapes", str(folder)):
        assert (
            main(["flops", "--model", model, "--recipe", "ralu-flux-4x", "--height", "128", "--width", "128", "--json"])
            == 0
        )
        counts.append(json.loads(capsys.readouterr().out)["tflops"])
    assert counts[0] == counts[1] > 0
