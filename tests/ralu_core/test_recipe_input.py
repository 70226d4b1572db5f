"""Hostile and malformed recipe input: the loader raises only RecipeError, quickly, with a bounded message
that names the file, and reports every problem of a file at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralu_core.errors import RecipeError
from ralu_core.recipes import find_recipe, load_recipe_file, load_recipe_text, resolve_recipe
from ralu_core.recipes.yaml_source import MAX_DEPTH

GOOD = """name: fuzz
schedule: {name: nt-dm, base_shift: 3.0}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 3, end: 0.3, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.2}}
  - {steps: 5, end: 1.0, transition: nt-dm-upsample, selector: all}
"""
MESSAGE_LIMIT = 25 * 500  # RecipeError quotes at most 21 problems of at most 400 characters


def refuse(source: str | bytes, registry=None) -> RecipeError:  # type: ignore[no-untyped-def]
    """Load (and resolve, given a registry) `source`; it must fail with RecipeError only, fast and briefly."""
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        recipe = load_recipe_text(source, "fuzz.yaml")
        if registry is not None:
            resolve_recipe(recipe, registry)
    assert time.perf_counter() - start < 2.0
    assert len(str(info.value)) < MESSAGE_LIMIT and str(info.value).startswith("invalid recipe ")
    return info.value


def survives(source: str | bytes, registry) -> None:  # type: ignore[no-untyped-def]
    """Loading and resolving either works or raises RecipeError, never anything else."""
    try:
        resolve_recipe(load_recipe_text(source, "fuzz.yaml"), registry)
    except RecipeError as exc:
        assert len(str(exc)) < MESSAGE_LIMIT


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_give_a_recipe_error_or_a_recipe(registry, data: bytes) -> None:  # type: ignore[no-untyped-def]
    survives(data, registry)


YAML_TOKENS = [*"{}[]:,-&*!|>'\"#%@` \n\tabn01.e", "!!int ", "!!float ", ".inf", "name: ", "stages:", "&a ", "*a"]


@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join))
def test_any_yaml_like_text_gives_a_recipe_error_or_a_recipe(registry, text: str) -> None:  # type: ignore[no-untyped-def]
    survives(text, registry)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["nt-dm", "uniform", "canny-edge", "all", "nt-dm-upsample", "naive-upsample", "none"]),
)
KEYS = st.sampled_from(
    ["name", "schedule", "stages", "steps", "end", "level", "selector", "transition", "ratio", "cache", "x"]
)
DATA = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25
)


@FUZZ
@given(st.dictionaries(KEYS, DATA, max_size=6))
def test_any_recipe_shaped_data_gives_a_recipe_error_or_a_recipe(registry, data: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    survives(yaml.safe_dump(data), registry)


@FUZZ
@given(st.integers(0, 5), st.integers(0, 200), st.text(max_size=20))
def test_any_edit_of_a_good_recipe_gives_a_recipe_error_or_a_recipe(
    registry, line: int, column: int, insert: str
) -> None:  # type: ignore[no-untyped-def]
    lines = GOOD.splitlines()
    lines[line] = lines[line][:column] + insert + lines[line][column:]
    survives("\n".join(lines), registry)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1: null", "keys must be strings"),
        ("name: x\n1: 2\nschedule: uniform\nstages: [{}]", "line 2: keys must be strings"),
        ("name: x\nschedule: uniform\nstages: [{end: !!int x}]", "a value YAML cannot read"),
        ("name: x\nschedule: uniform\nstages: [{end: !!float ''}]", "a value YAML cannot read"),
        ("name: a\nname: b\nschedule: uniform\nstages: [{}]", "line 2: duplicate key 'name' (first on line 1)"),
        ("a: &a [*a]", "recipes cannot be recursive"),
        ("a: " + "[" * 2000 + "]" * 2000, f"nested deeper than {MAX_DEPTH} levels"),
        ("a: " + "[" * 40 + "]" * 40, f"nested deeper than {MAX_DEPTH} levels"),
        ("", "the recipe is empty"),
        (
            "name: x\nschedule: uniform\nstages: [{steps: 1, end: 99999999999999999999999999}]",
            "a number of sensible size",
        ),
        ("name: x\nschedule: uniform\nstages: [{steps: 1, end: .nan}]", "$.stages[0].end: expected a finite number"),
        (
            "name: x\nschedule: uniform\nstages: [{steps: 1, end: 1e0}]",
            "$.stages[0].end: expected a number, got str '1e0' (YAML reads 1e0 as text: an exponent needs a dot in "
            "the mantissa, 1.0e0)",
        ),
        ("name: x\nschedule: uniform\nstages: [{steps: '3', end: 1.0}]", "got str '3' (write it without quotes)"),
    ],
)
def test_malformed_yaml_is_named_exactly(text: str, words: str) -> None:
    assert any(words in problem for problem in refuse(text).problems)


def test_an_alias_bomb_is_refused_at_once_with_a_short_message() -> None:
    """378 bytes of nested aliases stand for 9^7 strings: refused before anything is expanded."""
    levels = ["a: &a ['lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']"]
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    error = refuse("\n".join([*levels, "name: *g"]))
    assert "once its aliases are followed" in str(error)


@pytest.mark.parametrize(
    ("schedule", "stage", "path", "words"),
    [
        ("{name: nt-dm, base_shift: .inf}", "", "$.schedule.base_shift", "finite"),
        ("{name: nt-dm, base_shift: 3.0, shifts: [.nan, 2.0, 2.0], c: 0.02}", "", "$.schedule.shifts", "finite"),
        ("{name: nt-dm, base_shift: 1000.0}", "", "$.schedule.base_shift", "(0, 100]"),
        ("{name: nt-dm, base_shift: 3.0}", "steps: 1000000000000, ", "$.stages[0].steps", "from 1 to 1000"),
    ],
)
def test_non_finite_and_absurd_numbers_are_refused_before_any_work(registry, schedule, stage, path, words) -> None:  # type: ignore[no-untyped-def]
    text = GOOD.replace("{name: nt-dm, base_shift: 3.0}", schedule).replace(
        "{steps: 2, ", "{" + stage + ("" if stage else "steps: 2, ")
    )
    problems = refuse(text, registry).problems
    assert any(p.startswith(path) and words in p for p in problems), problems


def test_too_many_stages_are_refused() -> None:
    stage = "  - {steps: 1, end: 0.5, transition: nt-dm-upsample, selector: all}\n"
    assert any("at most 16 stages" in p for p in refuse(GOOD + stage * 20).problems)


def test_file_problems_name_the_file_and_are_all_reported_at_once(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mine.yaml"
    text = GOOD.replace("name: fuzz", "name: fuzz\ncolour: blue")  # a structural problem ...
    text = text.replace(
        "nt-dm-upsample, selector: {name: canny-edge, ratio: 0.2}",
        "nt-dm-upsampel, selector: {name: canny-edge, ratio: 2}",
    )
    path.write_text(text.replace("steps: 3,", 'steps: "3",'))
    with pytest.raises(RecipeError) as info:
        find_recipe(str(path), registry)
    assert str(info.value).startswith(f"invalid recipe {path}:")
    found = "\n".join(info.value.problems)
    for expected in (
        "unknown field(s) colour",
        "$.stages[1].steps: expected an integer",
        "unknown transition 'nt-dm-upsampel'",
        "$.stages[1].selector.ratio",
    ):
        assert expected in found  # ... does not hide the strategies' problems


def test_unreadable_and_non_utf8_files_name_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    for path, words in (
        (latin, "not UTF-8 text (byte 0xe9 at offset 9)"),
        (tmp_path / "missing.yaml", "cannot read"),
        (tmp_path, "cannot read"),
    ):
        with pytest.raises(RecipeError, match=f"invalid recipe {path}") as info:
            load_recipe_file(path)
        assert words in str(info.value)


def test_a_flood_of_problems_is_cut_short() -> None:
    stages = "".join(f"  - {{steps: 1, end: 0.5, bogus{i}: {'x' * 1000}}}\n" for i in range(40))
    error = refuse("name: x\nschedule: uniform\nstages:\n" + stages)
    assert error.problems[-1].startswith("... and ") and all(len(p) <= 400 for p in error.problems)


def test_a_structural_problem_does_not_hide_the_rules_between_stages(registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mixed.yaml"
    path.write_text(
        GOOD.replace("name: fuzz", "name: fuzz\ncolour: blue").replace(
            "{steps: 5, end: 1.0, transition: nt-dm-upsample, selector: all}",
            "{steps: 5, end: 0.25, transition: nt-dm-upsample, selector: {name: random, ratio: 0.5}}",
        )
    )
    with pytest.raises(RecipeError) as info:
        find_recipe(str(path), registry)
    found = "\n".join(info.value.problems)
    for expected in (
        "unknown field(s) colour",
        "the last transition must upsample every remaining token",
        "stage ends must increase strictly",
    ):
        assert expected in found


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ("'12'", "$.stages[0].step_tokens.dense_steps: expected a list, got str '12' (a list: [12])"),
        ("[1, x]", "$.stages[0].step_tokens.dense_steps[1]: expected an integer, got str 'x'"),
    ],
)
def test_a_list_field_given_text_is_one_problem_not_one_per_character(registry, steps: str, words: str) -> None:  # type: ignore[no-untyped-def]
    text = f"name: x\nschedule: uniform\nstages: [{{steps: 4, step_tokens: {{name: ras-focus, dense_steps: {steps}}}}}]"
    assert [p for p in refuse(text, registry).problems if "dense_steps" in p] == [words]
