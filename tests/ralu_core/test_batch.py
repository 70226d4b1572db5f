"""Many prompts into a folder: reading prompt files, splitting the work, resuming, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ralu_core.cli.batch import MANIFEST, OutputFolder, WorkItem, as_json, batches, plan_items, read_prompts, shard
from ralu_core.cli.preflight import check_seeds
from ralu_core.errors import RaluError


def test_text_and_jsonl_prompt_files(tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_text("# shapes\na red circle\n\n  a blue square  \n", encoding="utf-8")
    assert read_prompts(text) == ["a red circle", "a blue square"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a cat"}\n\n{"prompt": "a dog", "tag": 1}\n', encoding="utf-8")
    assert read_prompts(jsonl) == ["a cat", "a dog"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "\n# only a comment\n", "no prompts in it"),
        ("bad.jsonl", '{"prompt": "a cat"}\nnot json\n', "line 2 is not JSON"),
        ("nokey.jsonl", '{"text": "a cat"}\n', 'line 1 needs a non-empty "prompt" string'),
        ("binary.txt", b"\xff\xfe\x00", "not UTF-8 text"),
    ],
)
def test_bad_prompt_files_are_refused_with_what_is_wrong(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(RaluError, match=message):
        read_prompts(path)
    with pytest.raises(RaluError, match="cannot read it"):
        read_prompts(tmp_path / "missing.txt")


def test_shards_cover_every_item_once_for_any_process_count() -> None:
    items = plan_items(["a", "b", "c"], [0, 1])
    assert [(i.index, i.seed) for i in items] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    for world in (1, 2, 3, 4, 7):
        parts = [shard(items, rank, world) for rank in range(world)]
        flat = [item for part in parts for item in part]
        assert sorted(flat, key=lambda i: (i.index, i.seed)) == items and len(flat) == len(items)
    assert [len(b) for b in batches(items, 4)] == [4, 2]


def test_an_item_is_done_only_with_its_image_and_record_and_the_manifest_is_in_order(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    items = plan_items(["a red circle", "a cat"], [3])
    image = Image.new("RGB", (8, 8))
    folder.save(items[1], image, {"prompt": "a cat", "seed": 3})
    assert [folder.is_done(i) for i in items] == [False, True]
    folder.image_path(items[0]).write_bytes(b"")  # an image without a record (killed in between): not done
    assert not folder.is_done(items[0])
    folder.save(items[0], image, {"prompt": "a red circle", "seed": 3})
    assert folder.merge_manifest(items) == 2
    lines = [json.loads(line) for line in (folder.root / MANIFEST).read_text(encoding="utf-8").splitlines()]
    assert [line["file"] for line in lines] == ["000000-seed3.png", "000001-seed3.png"]
    assert not list(folder.root.glob("*.partial")) and not list(folder.records.glob(".*"))


def test_an_output_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(RaluError, match="is a file; --out is a folder"):
        OutputFolder(tmp_path / "taken").prepare()
    assert WorkItem(index=12, prompt="p", seed=5).stem == "000012-seed5"


MADE_WITH = {"recipe": "ralu-flux-7x", "model": "flux-tiny", "settings": as_json({"height": 64, "width": 64})}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda items, made: (items, {**made, "recipe": "ralu-flux-4x"}), "recipe ralu-flux-7x, now ralu-flux-4x"),
        (lambda items, made: (items, {**made, "settings": {"height": 64, "width": 128}}), "width 64, now 128"),
        (
            lambda items, made: (items, {**made, "settings": {**made["settings"], "num_inference_steps": 8}}),
            "num_inference_steps not given, now 8",
        ),
        (lambda items, made: (plan_items(["a red circle", "a dog"], [3]), made), "prompt 'a cat', now 'a dog'"),
    ],
    ids=["recipe", "size", "a setting given only now", "an edited prompt file"],
)
def test_resuming_into_a_folder_made_otherwise_is_refused_with_what_differs(tmp_path: Path, change, message) -> None:  # type: ignore[no-untyped-def]
    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    items = plan_items(["a red circle", "a cat"], [3])
    for item in items:
        folder.save(item, Image.new("RGB", (8, 8)), {"prompt": item.prompt, "seed": item.seed, **MADE_WITH})
    assert folder.finished(items, MADE_WITH) == set(items)  # the same run again: resumes
    grown = plan_items(["a red circle", "a cat", "a new prompt"], [3, 4])
    assert folder.finished(grown, MADE_WITH) == set(items)  # only the new items are left to make
    asked, made_with = change(items, MADE_WITH)
    with pytest.raises(RaluError, match="made otherwise than this run asks") as caught:
        folder.finished(asked, made_with)
    assert message in str(caught.value) and "Give another --out" in str(caught.value)


def test_a_record_that_cannot_be_read_is_not_taken_for_this_run(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    item = plan_items(["a cat"], [0])[0]
    folder.save(item, Image.new("RGB", (8, 8)), {"prompt": "a cat", "seed": 0, **MADE_WITH})
    (folder.records / f"{item.stem}.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RaluError, match=r"the record of 1 image\(s\) is not a JSON object \(000000-seed0\.json in"):
        folder.finished([item], MADE_WITH)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [([0, 1, 0], "--seeds: 0 given more than once"), ([-1], "-1 is not a seed"), ([2**64], "is not a seed")],
)
def test_seeds_that_repeat_or_no_generator_takes_are_refused(seeds: list[int], message: str) -> None:
    check_seeds("--seeds", [0, 1, 2**64 - 1])
    with pytest.raises(RaluError, match=message):
        check_seeds("--seeds", seeds)


def test_a_link_planted_at_a_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    """The temporary name was guessable (`.<name>.<pid>.partial`) and opened with open(..., "wb")."""
    import os

    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    item = plan_items(["a cat"], [0])[0]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (folder.image_path(item).name, f"{item.stem}.json"):
        where = folder.root if name.endswith(".png") else folder.records
        (where / f".{name}.{os.getpid()}.partial").symlink_to(victim)
    folder.save(item, Image.new("RGB", (8, 8)), {"prompt": "a cat", "seed": 0})
    assert victim.read_text() == "precious"
    assert folder.image_path(item).is_file() and not folder.image_path(item).is_symlink()
    assert Image.open(folder.image_path(item)).size == (8, 8)


def test_resume_removes_what_a_killed_writer_left_and_keeps_a_live_writers_files(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = [
        folder.root / f".000000-seed0.png.{dead_pid}-abc123.partial",
        folder.records / f".000000-seed0.json.{dead_pid}.partial",
    ]
    live = folder.root / f".000001-seed0.png.{os.getpid()}-xyz789.partial"
    for path in (*stale, live):
        path.write_bytes(b"half")
    folder.prepare()  # what a resumed run does first
    assert not any(path.exists() for path in stale) and live.exists()


def test_the_manifest_is_made_of_parsed_records_whatever_their_files_hold(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    items = plan_items(["a cat", "a dog"], [0])
    for item in items:
        folder.save(item, Image.new("RGB", (8, 8)), {"prompt": item.prompt, "seed": 0})
    record = folder.records / f"{items[0].stem}.json"
    record.write_text(json.dumps(json.loads(record.read_text()), indent=2), encoding="utf-8")  # re-saved pretty
    assert folder.merge_manifest(items) == 2
    lines = (folder.root / MANIFEST).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and [json.loads(line)["prompt"] for line in lines] == ["a cat", "a dog"]


def test_lines_end_at_line_feeds_only(tmp_path: Path) -> None:
    """U+2028, U+0085 and form feeds used to split a prompt in two and shift the indices that name the images."""
    text = tmp_path / "prompts.txt"
    text.write_bytes("a red\u2028circle\r\na blue\u0085square\x0cnow\nlast".encode())
    assert read_prompts(text) == ["a red\u2028circle", "a blue\u0085square\x0cnow", "last"]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_bytes('{"prompt": "raw \u2028 inside"}\r\n{"prompt": "two"}\n'.encode())  # valid JSON lines
    assert read_prompts(jsonl) == ["raw \u2028 inside", "two"]


def test_prompt_files_that_are_not_files_or_too_deep_are_refused_without_hanging(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(RaluError, match="not a regular file"):
        read_prompts(fifo)
    with pytest.raises(RaluError, match="not a regular file"):
        read_prompts(Path("/dev/zero"))  # endless: the size cap of regular files did not apply
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(RaluError, match="line 1 is nested too deeply"):
        read_prompts(deep)
