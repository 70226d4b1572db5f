"""Default output names: one per prompt, recipe and seed, and never one an earlier command made."""

from __future__ import annotations

from pathlib import Path

import pytest

from ralu_core.cli.outputs import default_image_paths, numbered_paths, prompt_slug


@pytest.mark.parametrize(
    ("prompt", "slug"),
    [
        ("A red circle, at the top-left!", "a-red-circle-at-the-top-left"),
        ("一只猫", "image"),
        ("x" * 80, "x" * 48),
        (
            "a red circle at the top left and a blue square at the bottom right",
            "a-red-circle-at-the-top-left-and-a-blue-square",
        ),
    ],
)
def test_prompt_slug(prompt: str, slug: str) -> None:
    assert prompt_slug(prompt) == slug


def test_default_paths_skip_names_already_taken(tmp_path: Path) -> None:
    first = default_image_paths("a cat", "ralu-flux-7x", 3, 1, folder=tmp_path)
    assert first == [tmp_path / "a-cat-ralu-flux-7x-seed3.png"]
    first[0].write_bytes(b"")
    assert default_image_paths("a cat", "ralu-flux-7x", 3, 1, folder=tmp_path) == [
        tmp_path / "a-cat-ralu-flux-7x-seed3-2.png"
    ]
    group = default_image_paths("a cat", "ralu-flux-7x", 3, 2, folder=tmp_path)
    assert group == [tmp_path / "a-cat-ralu-flux-7x-seed3-0.png", tmp_path / "a-cat-ralu-flux-7x-seed3-1.png"]
    group[1].write_bytes(b"")  # one image of a group taken: the whole group moves on
    assert [p.name for p in default_image_paths("a cat", "ralu-flux-7x", 3, 2, folder=tmp_path)] == [
        "a-cat-ralu-flux-7x-seed3-2-0.png",
        "a-cat-ralu-flux-7x-seed3-2-1.png",
    ]


def test_numbered_paths() -> None:
    assert numbered_paths(Path("x/img.png"), 1) == [Path("x/img.png")]
    assert numbered_paths(Path("x/img.png"), 2) == [Path("x/img-0.png"), Path("x/img-1.png")]
