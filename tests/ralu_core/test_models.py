"""Named models: registered by plugins, chosen as the default of their adapter's recipes, loaded by name."""

from __future__ import annotations

import pytest

from ralu_core import hookimpl
from ralu_core.cli.common import default_model, load_model
from ralu_core.errors import PluginError
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.plugins.models import NamedModel
from ralu_core.recipes import load_recipe_text
from ralu_core.testing import ToyPipeline, ToyPlugin

TOY_RECIPE = load_recipe_text("name: toy-baseline\nmodel: toy\nschedule: uniform\nstages:\n  - {level: 0}\n")


class TrainedToyPlugin:
    """Registers a 'trained' toy model with the call arguments it was trained for."""

    def __init__(self, default: bool) -> None:
        self.default = default
        self.loads = 0

    def _load(self) -> ToyPipeline:
        self.loads += 1
        return ToyPipeline()

    @hookimpl
    def ralu_register_models(self, register) -> None:  # type: ignore[no-untyped-def]
        register(
            NamedModel(
                name="toy-trained",
                adapter="toy",
                load=self._load,
                note="toy-trained draws toys",
                call_defaults={"height": 32, "width": 48},
                default=self.default,
            )
        )


def _registry(*plugins: object) -> Registry:
    return Registry.collect(create_plugin_manager(entry_points=[], plugins=[ToyPlugin(), *plugins]))


def test_a_default_named_model_wins_over_the_adapters_random_one(capsys) -> None:  # type: ignore[no-untyped-def]
    trained = TrainedToyPlugin(default=True)
    registry = _registry(trained)
    assert registry.models["toy-trained"].plugin and trained.loads == 0  # registering loads nothing
    assert default_model(registry, TOY_RECIPE) == "toy-trained"
    pipe, defaults = load_model(registry, None, TOY_RECIPE, "cpu", "float32")
    assert isinstance(pipe, ToyPipeline) and trained.loads == 1
    assert defaults == {"height": 32, "width": 48}
    assert "toy-trained draws toys" in capsys.readouterr().err


def test_without_a_default_named_model_the_adapters_embedded_model_is_used() -> None:
    registry = _registry(TrainedToyPlugin(default=False))
    assert default_model(registry, TOY_RECIPE) == "toy"
    pipe, defaults = load_model(registry, "toy", TOY_RECIPE, "cpu", "float32")
    assert isinstance(pipe, ToyPipeline) and set(defaults) == {"height", "width"}
    # A non-default named model is still loadable by its name.
    assert load_model(registry, "toy-trained", TOY_RECIPE, "cpu", "float32")[1]["width"] == 48


def test_registering_something_else_as_a_model_names_the_plugin() -> None:
    class Wrong:
        @hookimpl
        def ralu_register_models(self, register) -> None:  # type: ignore[no-untyped-def]
            register("flux-shapes")

    with pytest.raises(PluginError, match=r"registered 'flux-shapes', which is not a NamedModel"):
        _registry(Wrong())
