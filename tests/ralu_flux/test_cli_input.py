"""Bad CLI input is refused before any model loads, in a line or two with exit code 2; outputs are written
atomically; Ctrl-C exits quietly with 130; third-party notices stay out of the user's way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import ralu_core.cli.common
import ralu_core.cli.flops
from ralu_core.cli import main
from ralu_core.cli.model_sources import resolve_model_source
from ralu_core.pipelines.accelerated import AcceleratedPipeline
from ralu_flux.adapter import FluxAdapter

PROMPT = "a red circle at the top left on a white background"


@pytest.fixture
def no_loading(monkeypatch):  # type: ignore[no-untyped-def]
    """Fail the test if the CLI gets as far as loading a model."""

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(ralu_core.cli.common, "load_source", refuse)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--height", "100"], "nearest valid: 96 or 128"),
        (["--height", "4000000000"], "between 1 and 16384 pixels"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--steps", "4"], "fixes its steps per stage [2, 3, 5]"),
        (["--num-images", "0"], "--num-images must be at least 1"),
        (["--seed", "-1"], "--seed: -1 is not a seed"),
        (["--seed", str(2**64 - 1), "--num-images", "2"], "18446744073709551616 is not a seed"),
        (["--call-arg", "max_seqence_length=32"], "(did you mean 'max_sequence_length'?)"),
        (["--call-arg", "output_type=latent"], "needs output_type=pil"),
        (["--call-arg", "generator=1"], "set it with --seed"),
        (["--call-arg", "x=["], "cannot read the value"),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
            "--device",
        ),
        (["--device", "toaster"], "is not a device name"),
        (["--model", "flux-tinny"], "(did you mean 'flux-tiny'?)"),
        (["--recipe", "ralu-flux-7z"], "(did you mean 'ralu-flux-7x'?)"),
        (["--out", "/proc/ralu-test.png"], "cannot write in /proc"),
        (["--out", "picture.bmpx"], "cannot write .bmpx"),
    ],
)
def test_bad_generate_input_is_refused_before_loading(capsys, no_loading, tmp_path, argv, words) -> None:  # type: ignore[no-untyped-def]
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "x.png")]
    if "--model" not in argv:
        argv = [*argv, "--model", "flux-tiny"]
    code = main(["generate", PROMPT, *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and words in err
    assert "Traceback" not in err and len(err.splitlines()) <= 2


def test_an_output_path_through_a_file_is_refused(capsys, no_loading, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "file").write_text("x")
    assert main(["generate", PROMPT, "--model", "flux-tiny", "--out", str(tmp_path / "file" / "x.png")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--model", "flux-tiny", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_ctrl_c_while_saving_keeps_the_old_image_and_leaves_no_partial_file(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "keep.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out)
    before = out.read_bytes()
    real_save = Image.Image.save

    def interrupted_save(self, fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        fp.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    code = main(["generate", PROMPT, "--model", "flux-tiny", "--height", "64", "--width", "64", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert main(["generate", PROMPT, "--model", "flux-tiny", "--height", "64", "--width", "64", "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64) and out.read_bytes() != before


def test_ctrl_c_while_sampling_exits_quietly_with_130(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def interrupted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(AcceleratedPipeline, "__call__", interrupted)
    code = main(
        [
            "generate",
            PROMPT,
            "--model",
            "flux-tiny",
            "--height",
            "64",
            "--width",
            "64",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err and not (tmp_path / "x.png").exists()


def test_plugins_lists_the_embedded_models(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "model flux-tiny (flux, embedded, random weights)" in out and "model flux-mid" in out


def test_flops_refuses_a_recipe_for_another_model_family(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["flops", "--model", "flux-dev", "--recipe", "flux-baseline"]) == 0
    capsys.readouterr()
    assert main(["flops", "--model", "flux-dev", "--recipe", "ralu-flux-7x", "--json"]) == 0
    capsys.readouterr()
    from ralu_core.recipes import load_recipe_text

    sd3_recipe = load_recipe_text("name: for-sd3\nmodel: sd3\nschedule: uniform\nstages: [{level: 0}]\n")
    with pytest.raises(ralu_core.RaluError, match="is for 'sd3' pipelines and flux-dev is a 'flux'"):
        ralu_core.cli.flops.counted_runtime(ralu_core.cli.common.installed_registry(), "flux-dev", sd3_recipe)
    assert main(["flops", "--model", "flux-dve", "--recipe", "flux-baseline"]) == 2
    assert "(did you mean 'flux-dev'?)" in capsys.readouterr().err


def test_recipe_list_columns_line_up(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["recipes", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {len(line) - len(line.split(" ", 1)[1].lstrip()) for line in lines}
    assert len(lines) > 3 and len(starts) == 1  # the model column starts at the same place on every line


def test_the_cli_shows_what_matters_once_and_no_library_notices(tmp_path: Path) -> None:
    out = tmp_path / "img.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    argv = ["generate", PROMPT, "--model", "flux-tiny", "--height", "64", "--width", "64", "--dtype", "bfloat16"]
    done = subprocess.run(
        [sys.executable, "-c", "from ralu_core.cli import main; raise SystemExit(main())", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line]
    # Only ralu's own lines: notes (each once) and the summary; no library notices or warnings.
    assert all(line.startswith(("note: ", "recipe ")) for line in lines), lines
    assert sum("bfloat16 on the CPU" in line for line in lines) == 1
    assert lines[-1].startswith("recipe ralu-flux-7x: 1 image(s) 64x64")


@pytest.mark.parametrize("model", ["flux-tiny", "flux-mid"])
def test_the_size_rule_read_before_loading_is_the_one_the_call_applies(model: str) -> None:
    registry = ralu_core.cli.common.installed_registry()
    source = resolve_model_source(registry, model)
    pipe = source.adapter.embedded_pipeline(model)  # type: ignore[union-attr]
    for level in (0, 1):
        assert source.size_rule(level) == FluxAdapter().size_rule(int(pipe.vae_scale_factor), {}, level)


def test_a_hub_model_is_checked_from_its_config_files_before_its_weights_load(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Online, a hub id's model_index.json and component configs (kilobytes) are fetched to check the
    call; a repository the hub does not know is refused at once."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    import ralu_core.cli.model_sources as sources
    from ralu_flux.testing import make_flux_pipeline

    folder = tmp_path / "hub-copy"
    make_flux_pipeline("tiny", seed=0).save_pretrained(folder)
    fetched: list[str] = []

    def metadata(url: str, **kwargs):  # type: ignore[no-untyped-def]
        if "/someone/tiny-flux/" not in url:
            missing = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
            Exception.__init__(missing, "404")
            raise missing

    def download(repo: str, filename: str, **kwargs):  # type: ignore[no-untyped-def]
        fetched.append(filename)
        return str(folder / filename)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_hub_cached", lambda repo, filename: None)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(ralu_core.cli.common, "load_source", lambda *a, **k: pytest.fail("loaded a model"))
    code = main(
        ["generate", PROMPT, "--model", "someone/tiny-flux", "--height", "100", "--out", str(tmp_path / "x.png")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "multiple of 32 pixels" in err and "nearest valid: 96 or 128" in err
    assert fetched == ["model_index.json", "vae/config.json"]  # never a weights file
    code = main(["generate", PROMPT, "--model", "someone/no-such-model", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "the hub has no such model" in capsys.readouterr().err


def test_a_path_like_model_with_no_hub_to_ask_is_refused_at_once(capsys, no_loading, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--model models/flux` (no such folder) outside `./dev`, with no network: the hub library would retry for
    half a minute and the load end in "see the stack trace above"; ralu asks once and says what to check."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", unreachable + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "ENDPOINT", unreachable)
    assert main(["generate", PROMPT, "--model", "models/flux"]) == 2
    err = capsys.readouterr().err
    assert "--model models/flux: there is no folder models/flux here, and the hub cannot be reached" in err
    assert "check the path" in err and "HF_HUB_OFFLINE=1" in err
    assert "stacktrace" not in err and "Retrying" not in err


def test_threads_sets_torchs_threads_and_a_busy_machine_is_named(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    before = torch.get_num_threads()
    tiny = ["--model", "flux-tiny", "--height", "64", "--width", "64", "--device", "cpu"]
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    try:
        assert main(["generate", PROMPT, *tiny, "--threads", "1", "--out", str(tmp_path / "a.png")]) == 0
        assert torch.get_num_threads() == 1
        assert "busy" not in capsys.readouterr().err  # the user chose the threads: nothing to suggest
        torch.set_num_threads(before)
        assert main(["generate", PROMPT, *tiny, "--out", str(tmp_path / "b.png")]) == 0
        assert "note: this machine is busy (load 64.0 on" in capsys.readouterr().err
        monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
        assert main(["generate", PROMPT, *tiny, "--out", str(tmp_path / "c.png")]) == 0
        assert "busy" not in capsys.readouterr().err
        assert main(["generate", PROMPT, *tiny, "--threads", "0", "--out", str(tmp_path / "d.png")]) == 2
        assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
