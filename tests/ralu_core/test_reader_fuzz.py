"""The prompt-file and bench-report readers, fuzzed: whatever a file holds, they answer with prompts (or a
checked report) or with a RaluError of one line, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralu_core.cli.batch import read_prompts
from ralu_core.errors import RaluError
from ralu_core.measurement.paired import check_report, compare

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
SAMPLE = st.fixed_dictionaries(
    {},
    optional={
        "recipe": st.sampled_from(["a", "b"]) | JSON,
        "prompt": st.sampled_from(["x", "y"]) | JSON,
        "seed": st.integers(0, 3) | JSON,
        "scores": st.dictionaries(st.sampled_from(["q", "psnr"]), st.floats() | st.none() | JSON, max_size=2) | JSON,
    },
)
REPORT = st.fixed_dictionaries({}, optional={"samples": st.lists(SAMPLE, max_size=6) | JSON, "scores": JSON})


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_any_bytes_give_prompts_or_a_one_line_error(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(data)
    try:
        prompts = read_prompts(path)
    except RaluError as exc:
        assert "\n" not in str(exc)
        return
    assert prompts and all(isinstance(p, str) and p.strip() for p in prompts)


@FUZZ
@given(lines=st.lists(JSON.map(json.dumps) | st.text(max_size=20), max_size=6))
def test_any_jsonl_lines_give_prompts_or_a_one_line_error(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        read_prompts(path)
    except RaluError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(report=REPORT | JSON)
def test_any_report_is_compared_or_refused_in_one_line(report: object) -> None:
    try:
        check_report(report)
        results = compare(report, "a", "b")  # type: ignore[arg-type]
    except RaluError as exc:
        assert "\n" not in str(exc)
        return
    assert all(r.first_higher + r.second_higher <= r.pairs for r in results)
