"""The ralu CLI with the SD3 adapter, run in-process."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ralu_core.cli import main
from ralu_core.plugins import Registry, create_plugin_manager


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("model", "recipe", "low", "high", "stage2"),
    [
        ("sd3-medium", "ralu-sd3-2x", 1.9, 2.05, 1945),
        ("sd3-medium", "ralu-sd3-3x", 2.95, 3.2, 1636),
        ("sd35-large", "ralu-sd3-3x", 3.0, 3.5, 1636),
    ],
)
def test_flops_json(capsys, model: str, recipe: str, low: float, high: float, stage2: int) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "flops", "--model", model, "--recipe", recipe, "--json")
    data = json.loads(out)
    assert code == 0 and data["baseline_steps"] == 28 and data["attention_counted"] is False
    assert low < data["speedup"] < high
    assert [s["image_tokens"] for s in data["stages"]] == [1024, stage2, 4096]


def test_generate_with_an_embedded_sd3_model(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "sd3.png"
    code, stdout, stderr = run(
        capsys,
        "generate",
        "a red circle",
        "--recipe",
        "ralu-sd3-3x",
        "--model",
        "sd35-tiny",
        "--height",
        "64",
        "--width",
        "96",
        "--out",
        str(out),
        "--call-arg",
        "max_sequence_length=16",
    )
    assert code == 0 and stdout.strip() == str(out) and "NOT meaningful" in stderr
    assert Image.open(out).size == (96, 64)


def test_sd3_recipes_default_to_an_sd3_model(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Alone, ralu-sd3 falls back to its random sd3-tiny; with ralu-bench installed, its trained sd3-shapes wins.
    registry = Registry.collect(create_plugin_manager())
    trained = [name for name, e in registry.models.items() if e.obj.adapter == "sd3" and e.obj.default]
    expected = f"{trained[0]} is ralu-bench's" if trained else "sd3-tiny is an embedded SD3-architecture pipeline"
    out = tmp_path / "x.png"
    code, _, stderr = run(
        capsys, "generate", "a", "--recipe", "ralu-sd3-2x", "--out", str(out), "--height", "64", "--width", "64"
    )
    assert code == 0 and expected in stderr


@pytest.mark.parametrize(
    ("recipe", "shifts", "c"),
    [("ralu-sd3-2x", [6.12, 2.24, 1.97], 0.0586), ("ralu-sd3-3x", [6.40, 2.60, 2.27], 0.0255)],
)
def test_paper_recipes_run_the_published_schedule(capsys, recipe: str, shifts: list[float], c: float) -> None:  # type: ignore[no-untyped-def]
    """The RALU paper's SD3 values (2x: its table prints 6.21 for the first shift; 6.12 is what its
    procedure gives), with the solver's optimum for the same plan beside them."""
    code, out, _ = run(capsys, "schedule", "--recipe", recipe, "--json")
    data = json.loads(out)
    assert code == 0 and data["mode"] == "pinned" and data["shifts"] == shifts and data["c"] == c
    assert data["solved"]["js_distance"] <= data["js_distance"] < data["solved"]["js_distance"] + 1e-3


def test_generate_refuses_a_recipe_for_another_model_before_loading(capsys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import ralu_core.cli.common

    monkeypatch.setattr(ralu_core.cli.common, "load_source", lambda *a, **k: pytest.fail("loaded a model"))
    recipe = tmp_path / "for-flux.yaml"
    recipe.write_text("name: for-flux\nmodel: flux\nschedule: uniform\nstages: [{level: 0}]\n")
    code, _, err = run(
        capsys, "generate", "x", "--model", "sd3-tiny", "--recipe", str(recipe), "--out", str(tmp_path / "x.png")
    )
    assert code == 2 and "is for 'flux' pipelines and --model sd3-tiny is a 'sd3' pipeline" in err
    code, _, err = run(capsys, "generate", "x", "--model", "sd3-tiny", "--recipe", "ralu-sd3-3x", "--height", "48")
    assert code == 2 and "multiple of 32 pixels" in err


@pytest.mark.parametrize("model", ["sd3-tiny", "sd35-tiny", "sd3-mid"])
def test_the_size_rule_read_before_loading_is_the_one_the_call_applies(model: str) -> None:
    from ralu_core.cli.model_sources import resolve_model_source
    from ralu_sd3.adapter import SD3Adapter

    source = resolve_model_source(Registry.collect(create_plugin_manager()), model)
    pipe = source.adapter.embedded_pipeline(model)  # type: ignore[union-attr]
    patch = int(pipe.transformer.config.patch_size)
    for level in (0, 1):
        assert source.size_rule(level) == SD3Adapter().size_rule(
            int(pipe.vae_scale_factor), {"patch_size": patch}, level
        )


def test_without_a_recipe_the_models_adapter_recommends_one(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CLI's defaults come from the installed adapters: an SD3 model gets SD3's recipe, and `ralu flops`
    counts an SD3 recipe on SD3's architecture, with no FLUX name written into the command line."""
    out = tmp_path / "sd3.png"
    argv = ["generate", "a red circle", "--model", "sd3-tiny", "--height", "64", "--width", "64", "--out", str(out)]
    code, _, stderr = run(capsys, *argv, "--call-arg", "max_sequence_length=16")
    assert code == 0 and "recipe ralu-sd3-3x:" in stderr
    code, out_text, _ = run(capsys, "flops", "--recipe", "ralu-sd3-2x", "--json")
    assert code == 0 and json.loads(out_text)["model"] == "sd3-medium"
