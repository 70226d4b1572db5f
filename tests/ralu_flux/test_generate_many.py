"""`ralu generate --prompts FILE --out DIR`: many images, resumable, split across processes (gloo on this CPU)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ralu_core.cli import main

PROMPTS = ["a red circle", "a blue square", "# skipped", "a green triangle"]
ARGS = ["--model", "flux-tiny", "--height", "64", "--width", "64", "--call-arg", "max_sequence_length=16"]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def manifest(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single(prompt_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, every image."""
    out = tmp_path_factory.mktemp("single")
    assert main(["generate", "--prompts", str(prompt_file), "--out", str(out), "--seeds", "0", "1", *ARGS]) == 0
    return out


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    # Without a GPU, accelerate starts several processes only with --multi_gpu (its torchrun-based launcher).
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2", "--num_machines=1"],
}


def launch(prompt_file: Path, out: Path, launcher: str = "torchrun") -> subprocess.Popen[bytes]:
    """Two processes of `ralu generate --prompts`, started the way users start them."""
    command = [sys.executable, *LAUNCHERS[launcher]]
    command += ["-m", "ralu_core.cli", "generate", "--prompts", str(prompt_file), "--out", str(out)]
    command += ["--seeds", "0", "1", *ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_one_process_writes_every_image_and_a_manifest_then_resumes(single: Path, prompt_file: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert sorted(files(single)) == [f"{i:06d}-seed{s}.png" for i in range(3) for s in (0, 1)]
    lines = manifest(single)
    assert [(line["prompt_index"], line["seed"]) for line in lines] == [(i, s) for i in range(3) for s in (0, 1)]
    assert lines[2]["prompt"] == "a blue square" and lines[0]["recipe"] == "ralu-flux-7x"
    assert lines[0]["model"] == "flux-tiny" and float(lines[0]["seconds"]) > 0  # type: ignore[arg-type]
    assert lines[0]["settings"] == {"height": 64, "width": 64, "max_sequence_length": 16, "dtype": "float32"}
    before = {p.name: p.stat().st_mtime_ns for p in single.glob("*.png")}
    capsys.readouterr()
    assert main(["generate", "--prompts", str(prompt_file), "--out", str(single), "--seeds", "0", "1", *ARGS]) == 0
    assert "0 made by this process, 6 already there" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in single.glob("*.png")} == before


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_make_the_same_images_as_one(
    single: Path, prompt_file: Path, tmp_path: Path, launcher: str
) -> None:
    run = launch(prompt_file, tmp_path, launcher)
    _, raw = run.communicate(timeout=600)
    err = raw.decode()
    assert run.returncode == 0, err[-3000:]
    summary = [line for line in err.splitlines() if line.startswith("recipe ")]
    assert summary == [
        f"recipe ralu-flux-7x: 6 of 6 images in {tmp_path} (6 made by 2 processes, 0 already there); "
        f"manifest {tmp_path / 'manifest.jsonl'}"
    ]  # said once, with the work of both processes
    assert err.count("note: flux-tiny is an embedded") == 1  # the model's note once, by the main process
    assert files(tmp_path) == files(single)  # image for image, byte for byte
    timeless = [
        [{k: v for k, v in line.items() if k not in ("seconds", "process")} for line in manifest(f)]
        for f in (tmp_path, single)
    ]
    assert timeless[0] == timeless[1]
    # Every second item by each process: none made twice (the other's record would say so) or missed.
    assert [line["process"] for line in manifest(tmp_path)] == [0, 1] * 3


def test_a_killed_run_is_completed_exactly_by_the_next(single: Path, prompt_file: Path, tmp_path: Path) -> None:
    run = launch(prompt_file, tmp_path)
    records = tmp_path / ".ralu-records"
    deadline = time.monotonic() + 300
    while len(list(records.glob("*.json"))) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # every process of the launch, mid-run
    run.wait()
    assert len(list(tmp_path.glob("*.png"))) < 6  # it was stopped before the end
    again = launch(prompt_file, tmp_path)
    _, raw = again.communicate(timeout=600)
    err = raw.decode()
    assert again.returncode == 0, err[-3000:]
    assert files(tmp_path) == files(single)
    made, before = map(int, re.findall(r"\((\d+) made by 2 processes, (\d+) already there\)", err)[0])
    assert made + before == 6 and before >= 2  # it made only what the killed run left undone
    assert len(manifest(tmp_path)) == 6
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_bad_input_is_refused_before_any_model_loads(prompt_file: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    taken = tmp_path / "taken"
    taken.write_text("")
    cases = [
        (["--prompts", str(empty), "--out", str(tmp_path / "a")], "no prompts in it"),
        (["--prompts", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "a")], "cannot read it"),
        (["--prompts", str(prompt_file), "--out", str(taken)], "is a file; --out is a folder"),
        (["a cat", "--prompts", str(prompt_file), "--out", str(tmp_path / "a")], "not both"),
        (["--prompts", str(prompt_file), "--out", str(tmp_path / "a"), "--seeds", "0", "1", "0"], "0 given more"),
    ]
    for argv, message in cases:
        assert main(["generate", *argv, *ARGS]) == 2
        err = capsys.readouterr().err
        assert message in err and "RANDOM weights" not in err  # the model was never loaded


def test_resuming_with_another_recipe_or_an_edited_prompt_file_is_refused_before_any_model_loads(
    single: Path,
    prompt_file: Path,
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(single, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    edited = tmp_path / "edited.txt"
    edited.write_text(prompt_file.read_text(encoding="utf-8").replace("a blue square", "a blue star"), "utf-8")
    cases = [
        (["--prompts", str(prompt_file), "--recipe", "ralu-flux-4x"], "recipe ralu-flux-7x, now ralu-flux-4x"),
        (["--prompts", str(edited)], "000001-seed0.png: prompt 'a blue square', now 'a blue star'"),
        (["--prompts", str(prompt_file), "--guidance", "2.5"], "guidance_scale not given, now 2.5"),
    ]
    for argv, message in cases:
        assert main(["generate", *argv, "--out", str(out), "--seeds", "0", "1", *ARGS]) == 2
        err = capsys.readouterr().err
        assert message in err and "RANDOM weights" not in err, err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched


def test_one_prompt_under_a_launch_is_refused_before_any_model_loads(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch and torchrun set in every process
    assert main(["generate", "a cat", "--out", str(tmp_path / "cat.png"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "one prompt was given to 2 launched processes" in err and "--prompts FILE" in err
    assert "RANDOM weights" not in err and not list(tmp_path.iterdir())


def test_a_folder_another_run_is_writing_is_refused_before_any_model_loads(
    prompt_file: Path, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Two runs on one --out at once both claimed every image and left a mix; the second is now refused. The
    lock is the kernel's: another process holds it here, as a concurrent run would."""
    out = tmp_path / "shared"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ralu_core.cli.batch import OutputFolder; "
            "f = OutputFolder(Path(sys.argv[1])); f.prepare(); f.lock(); print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        argv = ["generate", "--prompts", str(prompt_file), "--out", str(out), "--seeds", "0", *ARGS]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: another ralu run is writing to this folder (pid {holder.pid})" in err
        assert "RANDOM weights" not in err and not list(out.glob("*.png"))
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the holder is gone (its lock with it): the folder is free
    assert len(list(out.glob("*.png"))) == 3


def test_a_full_disk_ends_the_run_in_one_line_and_the_folder_resumes(
    prompt_file: Path, tmp_path: Path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    import errno

    import ralu_core.files
    from ralu_core.cli.batch import OutputFolder

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "images"
    argv = ["generate", "--prompts", str(prompt_file), "--out", str(out), "--seeds", "0", *ARGS]
    with monkeypatch.context() as patch:  # full from the start: the probe writes data, not an empty file
        patch.setattr(ralu_core.files.os, "fsync", full)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot write there (No space left on device)" in err and "RANDOM weights" not in err
    save = OutputFolder.save
    saved: list[object] = []

    def fills_up(self, item, image, record) -> None:  # type: ignore[no-untyped-def]
        if saved:
            full()
        save(self, item, image, record)
        saved.append(item)

    with monkeypatch.context() as patch:  # full after the first image
        patch.setattr(OutputFolder, "save", fills_up)
        assert main(argv) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(lines) == 1 and "cannot write 000001-seed0.png (No space left on device)" in lines[0]
        assert "run the same command again" in lines[0]
    assert main(argv) == 0  # space again: the run completes the folder
    assert "3 of 3 images" in capsys.readouterr().err and len(manifest(out)) == 3
