"""A plugin that misbehaves after start-up is named in the error, and impossible plans fail before any
model call: adapter resolvers, registered recipe files, and token selectors' answers and plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ralu_core import accelerate, hookimpl
from ralu_core.errors import PluginError, RecipeError
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import find_recipe, load_recipe_text
from ralu_core.strategies.selectors import RatioSelector
from ralu_core.testing import ToyPipeline, ToyPlugin, seeded_generators


class Named:
    """A plugin object with a name, as an entry point would give it."""

    def __init__(self, name: str, **hooks: Any) -> None:
        self.__name__ = name
        for hook, function in hooks.items():
            setattr(self, hook, hookimpl(function))


def bad_selector(answer: Any, count: Any = 4) -> type[RatioSelector]:
    class Bad(RatioSelector):
        """Answers whatever the test says."""

        name: ClassVar[str] = "bad"

        def planned_count(self, num_candidates: int) -> Any:
            return count

        def select(self, request: Any) -> Any:
            return answer(request) if callable(answer) else answer

    return Bad


STAGES = {
    # the bad selector chooses the tokens to upsample
    "selector": "  - {steps: 2, end: 0.45, transition: nt-dm-upsample, selector: {name: bad}}\n"
    "  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}\n",
    # the bad selector chooses the tokens each step computes in the full-resolution stage
    "step_tokens": "  - {steps: 2, end: 0.45, transition: nt-dm-upsample, selector: {name: random, ratio: 0.25}}\n"
    "  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all, step_tokens: {name: bad}, inactive: drop}\n",
}


def run_with(selector: type[RatioSelector], where: str = "selector") -> ToyPlugin:
    toy = ToyPlugin()
    plugin = Named("bad-selectors", ralu_register_token_selectors=lambda register: register(selector))
    pm = create_plugin_manager(plugins=[toy, plugin])
    recipe = load_recipe_text("name: t\nschedule: nt-dm\nstages:\n  - {steps: 2, end: 0.3, level: 1}\n" + STAGES[where])
    accelerate(ToyPipeline(), recipe, plugin_manager=pm)("x", height=64, width=64, generator=seeded_generators(0))
    return toy


WHO = "token selector 'bad' (plugin 'bad-selectors')"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ([[0, 1, 2, 3]], "returned list; select must return a tensor"),
        (None, "returned NoneType"),
        (torch.tensor([[0.0, 1.0, 2.0, float("nan")]]), "returned torch.float32 positions"),
        (torch.tensor([[0, 1, 2]]), "returned shape (1, 3), expected (1, 4)"),
        (torch.tensor([[0, 1, 2, 99]]), "returned positions outside 0..15"),
        (torch.tensor([[0, 0, 1, 2]]), "returned the same position twice"),
    ],
)
def test_a_malformed_selection_names_the_selector_and_its_plugin(answer: Any, words: str) -> None:
    with pytest.raises(PluginError) as info:
        run_with(bad_selector(answer))
    assert str(info.value).startswith(WHO) and words in str(info.value)


def test_a_per_step_selector_may_not_repeat_a_token() -> None:
    """Duplicates would make the transformer see the same token several times."""
    with pytest.raises(PluginError, match="returned the same position twice"):
        run_with(bad_selector(lambda r: torch.zeros(r.candidates.shape[0], 4, dtype=torch.long)), "step_tokens")


def test_a_selector_that_raises_is_named_and_its_error_kept() -> None:
    def explode(request: Any) -> Any:
        raise ZeroDivisionError("boom")

    with pytest.raises(
        PluginError, match=r"token selector 'bad' \(plugin 'bad-selectors'\) failed: ZeroDivisionError"
    ) as info:
        run_with(bad_selector(explode))
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(("count", "words"), [(-1, "-1 of 16"), (17, "17 of 16"), (2.5, "2.5 of 16")])
def test_an_impossible_plan_is_refused_before_any_model_call(count: Any, words: str) -> None:
    toy = ToyPlugin()
    plugin = Named("bad-selectors", ralu_register_token_selectors=lambda register: register(bad_selector(None, count)))
    pm = create_plugin_manager(plugins=[toy, plugin])
    recipe = load_recipe_text(
        "name: t\nschedule: nt-dm\nstages:\n  - {steps: 2, end: 0.3, level: 1}\n"
        "  - {steps: 2, end: 0.45, transition: nt-dm-upsample, selector: {name: bad}}\n"
        "  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}\n"
    )
    with pytest.raises(PluginError, match=rf"{WHO.replace('(', '.').replace(')', '.')} plans to pick {words}"):
        accelerate(ToyPipeline(), recipe, plugin_manager=pm)("x", height=64, width=64)
    assert toy.adapter.calls == []  # refused when the call was bound: not even the prompts were encoded


@pytest.mark.parametrize(
    ("resolver", "words"),
    [
        (lambda pipeline: "flux", "answered ralu_resolve_model_adapter with str 'flux'"),
        (lambda pipeline: 1 / 0, "failed in ralu_resolve_model_adapter: ZeroDivisionError"),
    ],
)
def test_a_broken_adapter_resolver_is_named(resolver: Any, words: str) -> None:
    plugin = Named("bad-resolver", ralu_resolve_model_adapter=resolver)
    pm = create_plugin_manager(plugins=[ToyPlugin(), plugin])
    with pytest.raises(PluginError, match=f"ralu plugin 'bad-resolver' {words}"):
        accelerate(ToyPipeline(), "ralu-anything", plugin_manager=pm)


def test_a_registered_recipe_whose_file_is_missing_is_named(tmp_path: Path) -> None:
    plugin = Named("lost-recipes", ralu_register_recipes=lambda register: register("gone", tmp_path / "gone.yaml"))
    registry = Registry.collect(create_plugin_manager(plugins=[plugin]))
    with pytest.raises(
        RecipeError, match=r"plugin 'lost-recipes' registered this recipe as .*gone.yaml, which does not exist"
    ):
        find_recipe("gone", registry)
