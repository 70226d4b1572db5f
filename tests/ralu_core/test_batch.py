"""Many prompts into a folder: reading prompt files, splitting the work, resuming, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ralu_core.batch import MANIFEST, OutputFolder, WorkItem, batches, plan_items, read_prompts, shard
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
