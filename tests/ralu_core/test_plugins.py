"""Plugin discovery through entry points, error reporting by plugin name, and the hook specs."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import inspect
from pathlib import Path

import pytest
import torch

from ralu_core import PluginError, UnsupportedPipelineError, accelerate, hookimpl
from ralu_core.plugins import Registry, create_plugin_manager, hookspecs
from ralu_core.recipes import load_recipe_text
from ralu_core.testing import ToyPipeline, ToyPlugin, seeded_generators

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = ROOT / "docs" / "examples" / "ralu-center-focus" / "src"
FIXTURES = Path(__file__).parent / "fixtures"

RECIPE_WITH_THIRD_PARTY_SELECTOR = """
name: centre-first
schedule: nt-dm
stages:
  - {steps: 2, end: 0.3, level: 1}
  - {steps: 2, end: 0.45, transition: nt-dm-upsample, selector: {name: center-focus, ratio: 0.25}}
  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


def installed_plus(*extra: metadata.EntryPoint) -> list[metadata.EntryPoint]:
    return [*metadata.entry_points(group="ralu"), *extra]


def test_core_registers_itself_through_its_entry_point() -> None:
    names = {ep.name: ep for ep in metadata.entry_points(group="ralu")}
    assert names["core"].value == "ralu_core.plugins.builtin"
    registry = Registry.collect(create_plugin_manager())
    assert registry.strategies["token_selector"]["canny-edge"].plugin == "core"


def test_third_party_selector_from_an_entry_point_is_listed_and_usable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    entry = metadata.EntryPoint(name="center-focus", value="ralu_center_focus", group="ralu")
    toy = ToyPlugin()
    pm = create_plugin_manager(entry_points=installed_plus(entry), plugins=[toy])
    registry = Registry.collect(pm)
    assert "center-focus" in registry.names("token_selector")
    assert registry.strategies["token_selector"]["center-focus"].plugin == "center-focus"
    fast = accelerate(ToyPipeline(), load_recipe_text(RECIPE_WITH_THIRD_PARTY_SELECTOR), plugin_manager=pm)
    out = fast("x", height=64, width=64, generator=seeded_generators(0))
    assert out.images.shape == (1, 64, 16)
    # The centre tokens were upsampled first: stage 2 saw children around the middle of the grid.
    stage2 = toy.adapter.calls[0].seen_positions[2][0]
    children = stage2[stage2 != stage2.round()].reshape(-1)
    assert children.numel() > 0 and float(children.min()) >= 0.5 and float(children.max()) <= 3.5


def test_a_plugin_both_installed_and_handed_in_code_is_registered_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """plugin_demo.py after `pip install -e` of the example (or with its egg-info left in src/): the entry point
    loads the very module the demo hands to the manager."""
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    import ralu_center_focus

    entry = metadata.EntryPoint(name="center-focus", value="ralu_center_focus", group="ralu")
    pm = create_plugin_manager(entry_points=installed_plus(entry), plugins=[ralu_center_focus, ralu_center_focus])
    registry = Registry.collect(pm)
    assert registry.strategies["token_selector"]["center-focus"].plugin == "center-focus"


def test_a_plugin_whose_name_is_taken_is_a_plugin_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    class Impostor:
        __name__ = "core"  # the name ralu-core's own entry point registered under

    with pytest.raises(
        PluginError,
        match=r"ralu plugin 'core' cannot be registered: another plugin holds that name "
        r"\(<module 'ralu_core.plugins.builtin",
    ):
        create_plugin_manager(plugins=[Impostor()])


def test_broken_plugin_is_reported_by_name(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(FIXTURES))
    entry = metadata.EntryPoint(name="shiny-selectors", value="broken_plugin", group="ralu")
    with pytest.raises(PluginError, match=r"ralu plugin 'shiny-selectors' failed to load .*some_missing_dependency"):
        create_plugin_manager(entry_points=installed_plus(entry))


def test_plugin_registering_the_wrong_kind_is_reported_by_name(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(FIXTURES))
    entry = metadata.EntryPoint(name="odd", value="bad_registration_plugin", group="ralu")
    pm = create_plugin_manager(entry_points=installed_plus(entry))
    with pytest.raises(PluginError, match=r"ralu plugin 'odd' registered .*NotASelector.* does not subclass"):
        Registry.collect(pm)


def test_duplicate_names_name_both_plugins(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(FIXTURES))
    entry = metadata.EntryPoint(name="copycat", value="duplicate_plugin", group="ralu")
    pm = create_plugin_manager(entry_points=installed_plus(entry))
    with pytest.raises(PluginError, match=r"'copycat' registers token selector 'random', which plugin 'core'"):
        Registry.collect(pm)


def test_unsupported_pipeline_is_refused_with_the_known_adapters(toy_pm) -> None:  # type: ignore[no-untyped-def]
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedPipelineError, match=r"no model adapter for NotAPipeline; adapters: .*toy"):
        accelerate(NotAPipeline(), "anything", plugin_manager=toy_pm)


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int]] = []
        self.stages: list[dict[int, int]] = []

    @hookimpl
    def ralu_on_step_end(self, event) -> None:  # type: ignore[no-untyped-def]
        self.steps.append((event.stage, event.step, event.num_tokens))

    @hookimpl
    def ralu_on_stage_end(self, event) -> None:  # type: ignore[no-untyped-def]
        self.stages.append(event.tokens_per_level)


def test_observer_hooks_see_every_step_and_stage(toy_pipe) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    pm = create_plugin_manager(plugins=[ToyPlugin(), recorder])
    recipe = load_recipe_text(RECIPE_WITH_THIRD_PARTY_SELECTOR.replace("center-focus", "random"))
    accelerate(toy_pipe, recipe, plugin_manager=pm)("x", height=64, width=64)
    assert [s[:2] for s in recorder.steps] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    # 64 px / (4 px x 2 patch) = 8 x 8 tokens; 16 half-res; 4 upsampled into 16 children.
    assert [s[2] for s in recorder.steps] == [16, 16, 28, 28, 64, 64]
    assert recorder.stages == [{0: 0, 1: 16}, {0: 16, 1: 12}, {0: 64, 1: 0}]


# Each hook spec and a test (in this folder) that exercises it; the test below keeps this table complete.
HOOK_TESTS = {
    "ralu_register_token_selectors": "test_third_party_selector_from_an_entry_point_is_listed_and_usable",
    "ralu_register_transitions": "test_core_registers_itself_through_its_entry_point",
    "ralu_register_schedules": "test_core_registers_itself_through_its_entry_point",
    "ralu_register_feature_caches": "test_core_registers_itself_through_its_entry_point",
    "ralu_register_model_adapters": "test_unsupported_pipeline_is_refused_with_the_known_adapters",
    "ralu_register_recipes": "test_builtin_registries_are_populated",
    "ralu_resolve_model_adapter": "test_third_party_selector_from_an_entry_point_is_listed_and_usable",
    "ralu_on_step_end": "test_observer_hooks_see_every_step_and_stage",
    "ralu_on_stage_end": "test_observer_hooks_see_every_step_and_stage",
    "ralu_register_image_metrics": "test_bench_scores_pairs_and_writes_every_output",
    "ralu_register_prompt_sets": "test_bench_scores_pairs_and_writes_every_output",
    "ralu_register_models": "test_a_default_named_model_wins_over_the_adapters_random_one",
}


def _test_functions() -> set[str]:
    """Names of the test functions in this folder (the table below may point at any of them)."""
    names = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return names


TESTS = _test_functions()


def hook_specs() -> dict[str, object]:
    return {n: f for n, f in vars(hookspecs).items() if n.startswith("ralu_") and callable(f)}


def test_every_hook_spec_is_documented_typed_and_tested() -> None:
    specs = hook_specs()
    assert set(specs) == set(HOOK_TESTS)
    for name, function in specs.items():
        doc = inspect.getdoc(function) or ""
        assert len(doc.split()) >= 8, f"{name} needs a docstring that says what it is for"
        signature = inspect.signature(function)  # type: ignore[arg-type]
        assert signature.return_annotation is not inspect.Signature.empty, f"{name} has no return type"
        for parameter in signature.parameters.values():
            assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name}) is untyped"
        assert HOOK_TESTS[name] in TESTS, f"{name}: its test {HOOK_TESTS[name]} is missing"


def test_builtin_registries_are_populated(registry) -> None:  # type: ignore[no-untyped-def]
    assert registry.names("schedule") == ["nt-dm", "uniform"]
    assert registry.names("transition") == ["naive-upsample", "nt-dm-upsample"]
    # Installed plugins may add caches (ralu-caching does, where it is installed); the core's own is there.
    assert registry.strategies["feature_cache"]["none"].plugin == "core"
    extra = ToyPlugin()

    class RecipePlugin:
        @hookimpl
        def ralu_register_recipes(self, register) -> None:  # type: ignore[no-untyped-def]
            register("toy-recipe", FIXTURES / "toy-recipe.yaml")

    reg = Registry.collect(create_plugin_manager(plugins=[extra, RecipePlugin()]))
    assert reg.recipes["toy-recipe"].plugin != "core"
    out = accelerate(ToyPipeline(), "toy-recipe", plugin_manager=reg.pm)("x", height=64, width=64)
    assert torch.isfinite(out.images).all()


def test_the_example_plugins_recipe_resolves_with_the_plugin_installed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ralu_core.recipes import load_recipe_file, resolve_recipe

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    entry = metadata.EntryPoint(name="center-focus", value="ralu_center_focus", group="ralu")
    registry = Registry.collect(create_plugin_manager(entry_points=installed_plus(entry)))
    runtime = resolve_recipe(load_recipe_file(EXAMPLE_PLUGIN.parent / "centre-first-7x.yaml"), registry)
    selector = runtime.stages[1].selector
    assert selector is not None and selector.name == "center-focus" and selector.config.width == 0.3
