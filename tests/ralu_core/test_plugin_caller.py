"""Plugin hooks are called through pluggy's hook caller: wrappers run, tracing sees the calls, the adapter
resolver's `firstresult` decides, and every registration is still credited to the plugin that made it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ralu_core import hookimpl
from ralu_core.errors import PluginError
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.testing import ToyPipeline, ToyPlugin


class Watcher:
    """A wrapper around the recipe registrations and the adapter resolver, registering one recipe itself."""

    __name__ = "watcher"

    def __init__(self, recipe: Path) -> None:
        self.recipe = recipe
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def ralu_register_recipes(self, register: Any) -> Iterator[None]:
        register("watched", self.recipe)
        self.seen.append("recipes, before")
        result = yield
        self.seen.append("recipes, after")
        return result

    @hookimpl(wrapper=True)
    def ralu_resolve_model_adapter(self, pipeline: Any) -> Iterator[None]:
        answer = yield
        self.seen.append(f"resolved {answer.name}")
        return answer


def test_a_wrapper_hookimpl_runs_and_its_registrations_are_its_own(tmp_path: Path) -> None:
    class Registering:
        __name__ = "registering"

        @hookimpl
        def ralu_register_recipes(self, register: Any) -> None:
            register("plain", tmp_path / "plain.yaml")

    watcher = Watcher(tmp_path / "watched.yaml")
    pm = create_plugin_manager(plugins=[ToyPlugin(), Registering(), watcher])
    registry = Registry.collect(pm)
    assert watcher.seen == ["recipes, before", "recipes, after"]
    assert registry.recipes["watched"].plugin == "watcher"
    assert registry.recipes["plain"].plugin == "registering"  # the wrapped plugin's recipes stay its own
    assert registry.resolve_adapter(ToyPipeline()).name == "toy"
    assert watcher.seen[-1] == "resolved toy"


def test_hook_calls_are_traced() -> None:
    pm = create_plugin_manager(plugins=[ToyPlugin()])
    messages: list[str] = []
    pm.trace.root.setwriter(messages.append)
    pm.enable_tracing()
    Registry.collect(pm).resolve_adapter(ToyPipeline())
    assert any("ralu_register_recipes" in m for m in messages)
    assert any("ralu_resolve_model_adapter" in m for m in messages)


def test_the_resolver_is_firstresult_in_pluggys_order() -> None:
    """A plugin registered later is asked first, and its answer wins (it may override a built-in adapter)."""

    class Override:
        __name__ = "override"

        def __init__(self, adapter: Any) -> None:
            self.adapter = adapter
            self.asked = 0

        @hookimpl
        def ralu_resolve_model_adapter(self, pipeline: Any) -> Any:
            self.asked += 1
            return self.adapter

    toy = ToyPlugin()
    first, later = Override(None), Override(toy.adapter)
    later.__name__ = "override-later"
    registry = Registry.collect(create_plugin_manager(plugins=[toy, first, later]))
    assert registry.resolve_adapter(ToyPipeline()) is toy.adapter
    assert (later.asked, first.asked) == (1, 0)  # the later plugin answered; nobody after it was asked


def test_a_failure_inside_a_helper_is_credited_to_the_plugin_that_called_it() -> None:
    def helper(register: Any) -> None:
        raise OSError("disk gone")

    class Failing:
        __name__ = "failing"

        @hookimpl
        def ralu_register_recipes(self, register: Any) -> None:
            helper(register)

    with pytest.raises(PluginError, match=r"ralu plugin 'failing' failed in ralu_register_recipes: OSError: disk gone"):
        Registry.collect(create_plugin_manager(plugins=[ToyPlugin(), Failing()]))
