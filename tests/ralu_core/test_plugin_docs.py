"""docs/plugins.md shows the example plugin's files as they are: a reader who copies the page gets the
package that the tests load, not an older copy of it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "ralu-center-focus"


def test_the_walkthrough_holds_the_example_files_verbatim() -> None:
    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    for name in ("pyproject.toml", "src/ralu_center_focus/__init__.py", "centre-first-7x.yaml"):
        text = (EXAMPLE / name).read_text(encoding="utf-8").rstrip()
        assert f"\n{text}\n```" in page, f"docs/plugins.md does not show {name} as it is"
