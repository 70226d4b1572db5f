"""The feature-cache contract through the toy adapter: the engine owns every cache's lifecycle, caches
stack in recipe order and respect their stage filter, and token maps relate each token set to the last."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
import torch

from ralu_core import RecipeError, accelerate, hookimpl
from ralu_core.plugins import create_plugin_manager
from ralu_core.recipes import dump_recipe, load_recipe_text
from ralu_core.strategies.base import FeatureCache, StageInfo, StepInfo
from ralu_core.testing import ToyPipeline, ToyPlugin, seeded_generators

RALU = """
name: toy-ralu
schedule: {name: nt-dm, base_shift: 3.0}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 3, end: 0.3, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.25}}
  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


@attrs.frozen(kw_only=True)
class LabelConfig:
    label: str = "a"


LOG: list[tuple[Any, ...]] = []


class Recording(FeatureCache):
    """Records what the engine tells it and computes every step."""

    name: ClassVar[str] = "recording"
    Config = LabelConfig

    def begin_stage(self, stage: StageInfo) -> None:
        LOG.append(("begin", self.config.label, stage.index, stage.num_tokens, stage.token_map))

    def predict(self, step: StepInfo, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        LOG.append(("enter", self.config.label, step.stage, step.step))
        value = compute()
        LOG.append(("leave", self.config.label, step.stage, step.step))
        return value


class Repeating(FeatureCache):
    """Reuses the previous velocity on odd steps (a deterministic step-level cache)."""

    name: ClassVar[str] = "repeating"
    forecasts: ClassVar[bool] = True

    def begin_stage(self, stage: StageInfo) -> None:
        self.last: torch.Tensor | None = None

    def predict(self, step: StepInfo, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if step.step % 2 == 1 and self.last is not None:
            return self.last
        self.last = compute()
        return self.last


class CachePlugin:
    @hookimpl
    def ralu_register_feature_caches(self, register) -> None:  # type: ignore[no-untyped-def]
        register(Recording)
        register(Repeating)


@pytest.fixture
def run():  # type: ignore[no-untyped-def]
    toy = ToyPlugin()
    pm = create_plugin_manager(plugins=[toy, CachePlugin()])
    LOG.clear()

    def generate(cache_yaml: str, **kwargs: Any) -> Any:
        fast = accelerate(ToyPipeline(), load_recipe_text(RALU + cache_yaml), plugin_manager=pm)
        kwargs.setdefault("generator", seeded_generators(0))
        out = fast("x", height=64, width=64, **kwargs)
        return out, toy.adapter.calls[-1]

    return generate


def test_caches_stack_in_recipe_order(run) -> None:  # type: ignore[no-untyped-def]
    run("cache:\n  - {name: recording, label: outer}\n  - {name: recording, label: inner}\n")
    first = [e for e in LOG if e[0] in ("enter", "leave") and e[2:] == (0, 0)]
    assert first == [
        ("enter", "outer", 0, 0),
        ("enter", "inner", 0, 0),
        ("leave", "inner", 0, 0),
        ("leave", "outer", 0, 0),
    ]


def test_a_cache_works_only_in_the_stages_it_names(run) -> None:  # type: ignore[no-untyped-def]
    run("cache: {name: recording, stages: [2]}\n")
    stepped = {e[2] for e in LOG if e[0] == "enter"}
    assert stepped == {2}
    # It still hears of every token set, and at stage 2 it gets no map: it did not run in stage 1.
    begun = [(e[2], e[3], e[4]) for e in LOG if e[0] == "begin"]
    assert [(i, n) for i, n, _ in begun] == [(0, 16), (1, 28), (2, 64)]
    assert all(token_map is None for _, _, token_map in begun)


def test_every_token_set_comes_with_its_map_from_the_last(run) -> None:  # type: ignore[no-untyped-def]
    _, call = run("cache: recording\n")
    maps = [e[4] for e in LOG if e[0] == "begin"]
    assert maps[0] is None
    stage1_to_2, stage2_to_3 = maps[1], maps[2]
    # 16 half-res tokens -> 12 kept + 4 x 4 children; each child's parent is a half-res token covering it.
    assert stage1_to_2.parent.shape == (1, 28) and int(stage1_to_2.kept.sum()) == 12
    assert int(stage1_to_2.parent.max()) < 16
    children = stage1_to_2.parent[0][~stage1_to_2.kept[0]]
    assert sorted(torch.bincount(children).tolist())[-4:] == [4, 4, 4, 4]
    # The final transition upsamples the 12 remaining half-res tokens; the 16 full-res ones are kept.
    assert stage2_to_3.parent.shape == (1, 64) and int(stage2_to_3.kept.sum()) == 16
    # The model call heard of the same token sets, in order, before their first step.
    assert [(s.index, s.num_tokens) for s in call.stages_begun] == [(0, 16), (1, 28), (2, 64)]


def test_the_model_is_told_which_step_it_serves(run) -> None:  # type: ignore[no-untyped-def]
    _, call = run("cache: none\n")
    steps = [(s.stage, s.step, s.steps) for s in call.steps_seen]
    assert steps == [(0, 0, 2), (0, 1, 2), (1, 0, 3), (1, 1, 3), (1, 2, 3), (2, 0, 2), (2, 1, 2)]


def test_a_forecasting_cache_skips_model_calls_and_reports_it(run) -> None:  # type: ignore[no-untyped-def]
    computed: list[bool] = []

    class Observer:
        @hookimpl
        def ralu_on_step_end(self, event) -> None:  # type: ignore[no-untyped-def]
            computed.append(event.computed)

    toy = ToyPlugin()
    pm = create_plugin_manager(plugins=[toy, CachePlugin(), Observer()])
    fast = accelerate(ToyPipeline(), load_recipe_text(RALU + "cache: repeating\n"), plugin_manager=pm)
    fast("x", height=64, width=64, generator=seeded_generators(0))
    assert computed == [True, False, True, False, True, True, False]
    assert len(toy.adapter.calls[-1].seen_positions) == 4


def test_cache_lists_round_trip_and_none_is_empty() -> None:
    recipe = load_recipe_text(RALU + "cache:\n  - recording\n  - {name: recording, label: b, stages: [1, 2]}\n")
    assert [(c.name, dict(c.params), c.stages) for c in recipe.cache] == [
        ("recording", {}, None),
        ("recording", {"label": "b"}, (1, 2)),
    ]
    assert load_recipe_text(dump_recipe(recipe)) == recipe
    assert load_recipe_text(RALU + "cache: none\n").cache == ()
    assert load_recipe_text(RALU).cache == ()


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ("cache: {name: recording, stages: [5]}\n", "$.cache[0].stages: the recipe has stages 0 to 2, got 5"),
        ("cache: {name: recording, stages: []}\n", "must be a non-empty list of stage indices"),
        ("cache: {name: recording, stages: [1, 1]}\n", "lists a stage twice"),
        ("cache: {name: recording, stages: [-1]}\n", "must list stage indices"),
        ("cache: [recording, {name: nothing-like-it}]\n", "$.cache[1].name: unknown feature cache 'nothing-like-it'"),
        ("cache: {name: recording, colour: red}\n", "$.cache[0]"),
    ],
)
def test_bad_cache_entries_are_refused_with_their_path(cache: str, message: str) -> None:
    pm = create_plugin_manager(plugins=[ToyPlugin(), CachePlugin()])
    with pytest.raises(RecipeError) as info:
        accelerate(ToyPipeline(), load_recipe_text(RALU + cache), plugin_manager=pm)
    assert message in str(info.value)


def test_a_forecasting_cache_is_refused_where_steps_compute_a_subset() -> None:
    sparse = RALU.replace("selector: all}", "selector: all, step_tokens: {name: random, ratio: 0.5}, inactive: drop}")
    pm = create_plugin_manager(plugins=[ToyPlugin(), CachePlugin()])
    with pytest.raises(RecipeError, match=r"stage\(s\) 2 compute a subset of tokens per step"):
        accelerate(ToyPipeline(), load_recipe_text(sparse + "cache: repeating\n"), plugin_manager=pm)
    # Limited to the other stages, it is fine.
    accelerate(
        ToyPipeline(), load_recipe_text(sparse + "cache: {name: repeating, stages: [0, 1]}\n"), plugin_manager=pm
    )
