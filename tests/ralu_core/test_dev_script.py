"""Every `./dev COMMAND` that the README, docs/ and the examples tell a newcomer to type is one that `./dev`
knows (a docs page once said `./dev python docs/examples/caching.py`, which `./dev` refused)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def commands_of_dev() -> set[str]:
    text = (ROOT / "dev").read_text(encoding="utf-8")
    cases = text[text.index('case "$command" in') : text.index("esac")]
    return {name for label in re.findall(r"^\s+([a-z|-]+)\)", cases, flags=re.M) for name in label.split("|")}


def commands_in_docs() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs" / "examples").glob("*.py")]:
        for command in re.findall(r"\./dev ([a-z-]+)", path.read_text(encoding="utf-8")):
            found.setdefault(command, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_docs_use_only_commands_dev_knows() -> None:
    known = commands_of_dev()
    assert {"generate", "test", "python", "ralu"} <= known
    unknown = {command: where for command, where in commands_in_docs().items() if command not in known}
    assert not unknown, f"./dev does not know {unknown}"
