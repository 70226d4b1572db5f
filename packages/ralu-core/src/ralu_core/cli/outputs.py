"""Where ``ralu generate`` puts images: default names from the prompt, numbered so that nothing is overwritten."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

DEFAULT_FOLDER = Path("ralu-out")
"""Where `ralu generate` puts images when no --out is given."""


def prompt_slug(prompt: str, limit: int = 48) -> str:
    """A file-name part from the prompt's first words: lower-case ASCII letters and digits joined by hyphens,
    cut at a word boundary (``image`` for a prompt with no such characters)."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    slug = ""
    for word in words:
        longer = f"{slug}-{word}" if slug else word
        if len(longer) > limit:
            break
        slug = longer
    return slug or (words[0][:limit] if words else "image")


def default_image_paths(prompt: str, recipe: str, seed: int, count: int, folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """Fresh paths for `count` images of one command: ``ralu-out/<prompt>-<recipe>-seed<seed>.png`` (``-0``,
    ``-1`` ... for several), numbered ``-2``, ``-3`` ... where an earlier command made that name, so that no
    image of an earlier prompt is overwritten."""
    stem = f"{prompt_slug(prompt)}-{recipe}-seed{seed}"
    for attempt in itertools.count(1):
        name = stem if attempt == 1 else f"{stem}-{attempt}"
        paths = numbered_paths(folder / f"{name}.png", count)
        if not any(path.exists() for path in paths):
            return paths
    raise AssertionError("unreachable")  # pragma: no cover


def numbered_paths(out: Path, count: int) -> list[Path]:
    """`out` for one image; ``stem-0``, ``stem-1`` ... for several."""
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]
