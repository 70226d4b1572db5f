"""The ralu CLI, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ralu_core.cli import main
from ralu_core.measurement.bench import LABEL_WIDTH


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_on_an_embedded_random_model(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "img.png"
    code, stdout, stderr = run(
        capsys,
        "generate",
        "a red circle",
        "--model",
        "flux-tiny",
        "--out",
        str(out),
        "--height",
        "64",
        "--width",
        "96",
        "--call-arg",
        "max_sequence_length=16",
    )
    assert code == 0 and stdout.strip() == str(out)
    assert "RANDOM weights" in stderr and "NOT meaningful" in stderr
    assert Image.open(out).size == (96, 64)


def test_generate_without_out_never_overwrites_an_earlier_image(capsys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    tiny = ["--model", "flux-tiny", "--height", "64", "--width", "64", "--call-arg", "max_sequence_length=16"]
    made = []
    for prompt in ("a red circle", "a blue square", "a red circle"):
        code, stdout, _ = run(capsys, "generate", prompt, *tiny)
        assert code == 0
        made.append(stdout.strip())
    assert made == [
        "ralu-out/a-red-circle-ralu-flux-7x-seed0.png",
        "ralu-out/a-blue-square-ralu-flux-7x-seed0.png",
        "ralu-out/a-red-circle-ralu-flux-7x-seed0-2.png",
    ]
    assert all((tmp_path / path).is_file() for path in made)
    code, stdout, stderr = run(capsys, "generate", "a green star", *tiny, "--out", made[0])
    assert code == 0 and f"note: replaced {made[0]}" in stderr


def test_generate_save_selection_draws_each_stage_beside_the_image(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "img.png"
    tiny = ["--model", "flux-tiny", "--height", "64", "--width", "64", "--call-arg", "max_sequence_length=16"]
    code, stdout, _ = run(capsys, "generate", "a red circle", *tiny, "--out", str(out), "--save-selection")
    selection = tmp_path / "img-selection.png"
    assert code == 0 and stdout.split() == [str(out), str(selection)]
    width, height = Image.open(selection).size
    assert width >= 3 * 256 and height > 256  # three stages of ralu-flux-7x, panels drawn at least 256 px
    code, _, stderr = run(capsys, "generate", "--prompts", str(tmp_path / "p.txt"), "--save-selection", *tiny)
    assert code == 2 and "--save-selection is for one prompt" in stderr


def test_generate_refuses_a_bad_size_with_nearest_sizes(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    argv = ["generate", "x", "--model", "flux-tiny", "--height", "100", "--out", str(tmp_path / "x.png")]
    code, _, stderr = run(capsys, *argv)
    assert code == 2 and "nearest valid: 96 or 128" in stderr


def test_recipes_list_show_validate(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "recipes", "list")
    assert code == 0 and all(n in out for n in ("flux-baseline", "ralu-flux-4x", "ralu-flux-5x", "ralu-flux-7x"))
    code, out, _ = run(capsys, "recipes", "show", "ralu-flux-7x")
    assert code == 0 and "canny-edge" in out and "ratio: 0.2" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(out.replace("ratio: 0.2", "ratio: 2.0"))
    code, _, err = run(capsys, "recipes", "validate", str(bad))
    assert code == 2 and "$.stages[1].selector.ratio" in err
    good = tmp_path / "good.yaml"
    good.write_text(out)
    assert run(capsys, "recipes", "validate", str(good))[0] == 0


def test_plugins_lists_distributions_and_registrations(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "core (ralu-core 0.1.0)" in out and "flux (ralu-flux 0.1.0)" in out
    assert "token selector canny-edge" in out and "model adapter flux" in out and "recipe ralu-flux-7x" in out


def test_schedule_json(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "schedule", "--steps", "2", "3", "5", "--ends", "0.2", "0.3", "1.0", "--json")
    data = json.loads(out)
    assert code == 0
    assert {"shifts", "c", "starts", "sigmas", "js_distance"} <= set(data)
    assert len(data["shifts"]) == 3 and [len(s) for s in data["sigmas"]] == [3, 4, 6]
    assert 0 < data["c"] <= 0.25 and data["starts"][0] == 0.0


@pytest.mark.parametrize(("recipe", "low", "high"), [("ralu-flux-4x", 3.5, 4.5), ("ralu-flux-7x", 6.5, 7.5)])
def test_flops_json_for_flux_dev(capsys, recipe: str, low: float, high: float) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "flops", "--model", "flux-dev", "--recipe", recipe, "--json")
    data = json.loads(out)
    assert code == 0 and data["attention_counted"] is False
    assert {"baseline_tflops", "tflops", "speedup", "stages"} <= set(data)
    assert low < data["speedup"] < high
    assert data["stages"][0]["image_tokens"] == 1024 and data["stages"][-1]["image_tokens"] == 4096
    parts = sum(s["tflops"] for s in data["stages"]) + data["final_decode_tflops"]
    assert abs(parts - data["tflops"]) < 1e-6 * data["tflops"]
    both = data["conventions"]
    assert both["linear_only"]["speedup"] == data["speedup"] and both["with_attention"]["speedup"] > data["speedup"]


def test_flops_baseline_at_fifty_steps_is_one(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "flops", "--recipe", "flux-baseline", "--json", "--attention", "include")
    data = json.loads(out)
    assert code == 0 and data["stages"][0]["steps"] == 50 and abs(data["speedup"] - 1.0) < 1e-12


def test_bench_reports_side_by_side_ratios(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench"
    code, stdout, _ = run(
        capsys,
        "bench",
        "--model",
        "flux-tiny",
        "--recipes",
        "flux-baseline",
        "ralu-flux-7x",
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "30",
        "--seeds",
        "0",
        "1",
        "--warmup",
        "0",
        "--prompt",
        "a red circle",
        "--prompt",
        "a blue square",
        "--call-arg",
        "max_sequence_length=16",
        "--out",
        str(out),
    )
    data = json.loads((out / "report.json").read_text())
    assert code == 0 and "ralu-flux-7x" in stdout and data["settings"]["final_decode_timed"] is True
    base, fast = data["summary"]
    assert base["recipe"] == "flux-baseline" and base["speedup_wall"] == 1.0
    assert len([s for s in data["samples"] if s["recipe"] == "ralu-flux-7x"]) == 4  # 2 prompts x 2 seeds
    assert fast["tflops_all"] < base["tflops_all"] and fast["speedup_flops_all"] > 1
    assert fast["efficiency"] == fast["speedup_wall"] / fast["speedup_flops_all"]
    assert (out / "report.md").read_text().startswith("CPU") and (out / "grid.png").is_file()
    width, height = Image.open(out / "grid.png").size  # prompt labels, prompts x recipes, a header of names
    assert width == LABEL_WIDTH + 2 * 68 and 10 <= height - 2 * 68 <= 30


def test_bench_needs_a_size_for_a_loaded_model(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "some-local-model"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "FluxPipeline"}', encoding="utf-8")
    code, _, err = run(capsys, "bench", "--model", str(folder))
    assert code == 2 and "needs --height and --width" in err


def test_bench_refuses_repeated_seeds_before_loading(capsys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bench", "--model", "flux-tiny", "--seeds", "0", "1", "1")
    assert code == 2 and "--seeds: 1 given more than once" in err and "RANDOM weights" not in err
    assert list(tmp_path.iterdir()) == []  # a refused command makes no report folder


def test_bench_refuses_two_recipes_of_one_name_before_loading(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two YAML files that both say `name: x` were merged into one row of the report (so were their samples)."""
    text = (
        Path(__file__).resolve().parents[2] / "packages/ralu-flux/src/ralu_flux/recipes/ralu-flux-7x.yaml"
    ).read_text()
    copy = tmp_path / "copy.yaml"
    copy.write_text(text)
    code, _, err = run(capsys, "bench", "--model", "flux-tiny", "--recipes", "flux-baseline", "ralu-flux-7x", str(copy))
    assert code == 2 and f"ralu-flux-7x and {copy} are both named 'ralu-flux-7x'" in err
    assert "RANDOM weights" not in err
    code, _, err = run(capsys, "bench", "--model", "flux-tiny", "--recipes", "flux-baseline", "flux-baseline")
    assert code == 2 and "both named 'flux-baseline'" in err


def test_bench_refuses_an_unusable_out_and_no_prompts_before_loading(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Both used to fail only after the run (FileExistsError, then the results lost) or in an UnboundLocalError."""
    taken = tmp_path / "report"
    taken.write_text("x")
    code, _, err = run(capsys, "bench", "--model", "flux-tiny", "--out", str(taken))
    assert code == 2 and f"--out {taken}: is a file; ralu bench writes a folder" in err and "RANDOM" not in err
    fresh = tmp_path / "fresh"
    code, _, err = run(
        capsys, "bench", "--model", "flux-tiny", "--prompt-set", "x", "--num-prompts", "0", "--out", str(fresh)
    )
    assert code == 2 and "--num-prompts must be at least 1, got 0" in err and "RANDOM" not in err
    assert not fresh.exists()
    code, _, err = run(capsys, "bench", "--model", "flux-tiny", "--warmup", "-1", "--out", str(fresh))
    assert code == 2 and "--warmup must be 0 or more" in err and "RANDOM" not in err


def test_flops_of_a_local_pipeline_folder(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ralu_flux.testing import make_flux_pipeline

    make_flux_pipeline("tiny", seed=0).save_pretrained(tmp_path / "tiny-flux")
    code, out, _ = run(
        capsys,
        "flops",
        "--model",
        str(tmp_path / "tiny-flux"),
        "--recipe",
        "ralu-flux-7x",
        "--height",
        "128",
        "--width",
        "128",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and data["model"] == "tiny-flux" and data["baseline_steps"] == 28
    assert [s["image_tokens"] for s in data["stages"]] == [16, 13 + 4 * 3, 64]
    code, _, err = run(capsys, "flops", "--model", str(tmp_path / "nothing"), "--recipe", "ralu-flux-7x")
    assert code == 2 and "unknown model" in err


def test_flops_takes_a_named_model_as_generate_does(capsys) -> None:  # type: ignore[no-untyped-def]
    """`--model flux-dev-random` counts its architecture, flux-dev (named models with a folder count its
    configs: tests/ralu_bench)."""
    counts = []
    for model in ("flux-dev-random", "flux-dev"):
        code, out, _ = run(capsys, "flops", "--model", model, "--recipe", "ralu-flux-7x", "--json")
        assert code == 0
        counts.append(json.loads(out)["tflops"])
    assert counts[0] == counts[1]
