"""Recipe loading and validation: every error names the bad field's path and says how to fix it."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from ralu_core import RecipeError, accelerate
from ralu_core.recipes import dump_recipe, find_recipe, load_recipe_text, resolve_recipe

GOOD = textwrap.dedent(
    """
    name: three-stage
    description: a test recipe
    schedule: {name: nt-dm, base_shift: 3.0}
    stages:
      - {steps: 2, end: 0.2, level: 1}
      - {steps: 2, end: 0.3, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.25}}
      - {steps: 3, end: 1.0, transition: nt-dm-upsample, selector: all}
    """
)


def variant(**changes: object) -> str:
    """GOOD with top-level keys replaced, or stage fields changed via 'stageN.field'."""
    data = yaml.safe_load(GOOD)
    for key, value in changes.items():
        if key.startswith("stage"):
            index, field = key[5:].split(".", 1)
            if value is None:
                data["stages"][int(index)].pop(field, None)
            else:
                data["stages"][int(index)][field] = value
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    return yaml.safe_dump(data)


def problems(text: str, registry) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError) as info:
        resolve_recipe(load_recipe_text(text, "test.yaml"), registry)
    return info.value.problems


def test_good_recipe_resolves(registry) -> None:  # type: ignore[no-untyped-def]
    runtime = resolve_recipe(load_recipe_text(GOOD), registry)
    assert runtime.schedule.name == "nt-dm"
    assert runtime.stages[1].selector is not None and runtime.stages[1].selector.config.ratio == 0.25
    assert runtime.stages[2].selector is not None and runtime.stages[2].selector.covers_all
    assert runtime.start_level == 1


def test_dump_and_load_round_trip() -> None:
    recipe = load_recipe_text(GOOD)
    assert load_recipe_text(dump_recipe(recipe)) == recipe


def test_invalid_yaml() -> None:
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe_text("stages: [", "bad.yaml")


def test_not_a_mapping() -> None:
    with pytest.raises(RecipeError, match=r"\$: expected a mapping"):
        load_recipe_text("- just\n- a list\n")


def test_unknown_top_level_key(registry) -> None:  # type: ignore[no-untyped-def]
    text = GOOD + "speed: fast\n"
    assert any(p.startswith("$:") and "speed" in p for p in problems(text, registry))


def test_missing_required_field(registry) -> None:  # type: ignore[no-untyped-def]
    assert problems(variant(schedule=None), registry) == ["$.schedule: required field missing"]


def test_scalar_types_are_strict(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage0.steps": "2"}), registry)
    assert any(p.startswith("$.stages[0].steps:") and "expected an integer" in p for p in found)


def test_unknown_strategy_lists_registered_ones(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.selector": {"name": "sobel-magic", "ratio": 0.2}}), registry)
    assert found == [
        "$.stages[1].selector.name: unknown token selector 'sobel-magic'; "
        "registered: all, canny-edge, latent-gradient, random, ras-focus"
    ]


def test_strategy_parameter_out_of_range(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.selector": {"name": "canny-edge", "ratio": 1.5}}), registry)
    assert len(found) == 1 and found[0].startswith("$.stages[1].selector.ratio:") and "(0, 1]" in found[0]


def test_unknown_strategy_parameter(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.selector": {"name": "canny-edge", "ration": 0.2}}), registry)
    assert found == ["$.stages[1].selector: unknown field(s) ration"]


def test_strategy_without_name(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.selector": {"ratio": 0.2}}), registry)
    assert len(found) == 1 and found[0].startswith("$.stages[1].selector:") and "needs a `name`" in found[0]


def test_stage_ends_must_increase_and_finish_at_one(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.end": 0.1, "stage2.end": 0.9}), registry)
    assert any(p.startswith("$.stages[1].end:") and "increase" in p for p in found)
    assert any(p.startswith("$.stages[2].end:") and "1.0" in p for p in found)


def test_first_stage_has_no_transition(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage0.transition": "nt-dm-upsample"}), registry)
    assert any(p.startswith("$.stages[0]:") for p in found)


def test_later_stage_needs_transition_and_selector(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.transition": None, "stage1.selector": None}), registry)
    assert "$.stages[1].transition: required for every stage after the first" in found
    assert any(p.startswith("$.stages[1].selector: required") for p in found)


def test_multi_stage_recipe_must_start_at_half_resolution(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage0.level": 0}), registry)
    assert any(p.startswith("$.stages[0].level:") and "level 1" in p for p in found)


def test_level_value_is_checked(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage0.level": 3}), registry)
    assert any(p.startswith("$.stages[0].level: must be 0") for p in found)


def test_last_transition_must_upsample_everything(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage2.selector": {"name": "random", "ratio": 0.5}}), registry)
    assert any(p.startswith("$.stages[2].selector:") and "`all`" in p for p in found)


def test_naive_upsample_needs_a_schedule_without_rewind(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(
        variant(**{"stage1.transition": "naive-upsample", "stage2.transition": "naive-upsample"}), registry
    )
    assert any(p.startswith("$.stages[1].transition:") and "rewind: false" in p for p in found)
    ok = variant(**{"stage1.transition": "naive-upsample", "stage2.transition": "naive-upsample"}).replace(
        "base_shift: 3.0", "base_shift: 3.0\n  rewind: false"
    )
    resolve_recipe(load_recipe_text(ok), registry)


def test_uniform_schedule_takes_one_stage(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(schedule="uniform"), registry)
    assert "$.stages: the uniform schedule runs exactly one stage, got 3" in found


def test_nt_dm_needs_steps_per_stage(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.steps": None}), registry)
    assert "$.stages[1].steps: the nt-dm schedule needs a step count for every stage" in found


def test_schedule_parameter_validation(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(schedule={"name": "nt-dm", "c": 0.5, "shifts": [1.0, 2.0, 3.0]}), registry)
    assert len(found) == 1 and found[0].startswith("$.schedule.c:") and "0.25" in found[0]


@pytest.mark.parametrize(
    ("schedule", "path", "words"),
    [
        ({"name": "nt-dm", "rewind": False, "c": 0.02}, "$.schedule.c", "no effect with `rewind: false`"),
        ({"name": "nt-dm", "source": "a paper"}, "$.schedule.source", "give them"),
        ({"name": "nt-dm", "shifts": [3.0, 3.0, 3.0]}, "$.schedule", "give both `shifts` and `c`"),
    ],
)
def test_pinned_schedule_parameters_must_make_sense_together(registry, schedule, path: str, words: str) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(schedule=schedule), registry)
    assert len(found) == 1 and found[0].startswith(path) and words in found[0]


def test_a_pinned_schedule_runs_its_values_and_says_so(registry) -> None:  # type: ignore[no-untyped-def]
    pinned = {"name": "nt-dm", "base_shift": 3.0, "shifts": [4.0, 2.5, 2.0], "c": 0.02, "source": "my notes"}
    runtime = resolve_recipe(load_recipe_text(variant(schedule=pinned)), registry)
    solution = runtime.schedule.solution([s.spec for s in runtime.stages], 3.0)
    assert solution.shifts == (4.0, 2.5, 2.0) and solution.c == 0.02
    assert runtime.schedule.config.mode == "pinned" and runtime.schedule.config.source == "my notes"


def test_empty_stages() -> None:
    with pytest.raises(RecipeError, match=r"\$.stages: a recipe needs at least one stage"):
        load_recipe_text("name: x\nschedule: uniform\nstages: []\n")


def test_all_problems_are_reported_together(registry) -> None:  # type: ignore[no-untyped-def]
    found = problems(variant(**{"stage1.selector": "nope", "stage2.transition": "nope"}), registry)
    assert len(found) == 2


def test_unknown_recipe_name_lists_builtins(registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match="no built-in recipe of that name and no such file"):
        find_recipe("ralu-nonexistent", registry)
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    assert find_recipe(str(path), registry).name == "three-stage"


def test_recipe_for_another_model_is_refused(toy_pipe, toy_pm) -> None:  # type: ignore[no-untyped-def]
    recipe = load_recipe_text(GOOD + "model: flux\n")
    with pytest.raises(RecipeError, match=r"\$.model: this recipe is for 'flux' pipelines"):
        accelerate(toy_pipe, recipe, plugin_manager=toy_pm)


def test_multi_stage_recipe_refuses_num_inference_steps(toy_pipe, toy_pm, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    fast = accelerate(toy_pipe, load_recipe_text(GOOD), plugin_manager=toy_pm)
    with pytest.raises(ValueError, match=r"fixes its steps per stage \(2, 2, 3\)"):
        fast("x", num_inference_steps=20)
    assert toy_plugin.adapter.calls == []  # refused before any work
