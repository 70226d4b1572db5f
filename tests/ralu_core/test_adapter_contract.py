"""The adapter contract: two required methods, optional capabilities, one bind and one plan check per call."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from ralu_core import RaluError, RecipeError, accelerate
from ralu_core.measurement.profile import CountsFlops, counting
from ralu_core.pipelines.adapter import CachedAttention, DescribesBlocks, EmbedsModels, adapter_facts, embedded_models
from ralu_core.plugins import create_plugin_manager
from ralu_core.plugins.hookspecs import RegisterAdapter, hookimpl
from ralu_core.recipes import load_recipe_text
from ralu_core.sampling.contract import BoundCall, ModelAdapter
from ralu_core.testing import ToyAdapter, ToyPipeline, ToyPlugin, seeded_generators

RAS_KV = "name: ras-kv\nschedule: uniform\nstages:\n  - {level: 0, steps: 6, step_tokens: {name: random, ratio: 0.5}}\n"
RAS_DROP = RAS_KV.replace("ras-kv", "ras-drop").replace("0.5}}", "0.5}, inactive: drop}")


class BareAdapter(ModelAdapter):
    """Only what is required: the toy's binding, none of its capabilities."""

    name: ClassVar[str] = "bare"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ToyPipeline",)

    def __init__(self) -> None:
        self.toy = ToyAdapter()

    def supports(self, pipeline: Any) -> bool:
        return isinstance(pipeline, ToyPipeline)

    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        return self.toy.bind(pipeline, coarsest_level, args, kwargs)


class BarePlugin:
    def __init__(self) -> None:
        self.adapter = BareAdapter()

    @hookimpl
    def ralu_register_model_adapters(self, register: RegisterAdapter) -> None:
        register(self.adapter)

    @hookimpl
    def ralu_resolve_model_adapter(self, pipeline: Any) -> ModelAdapter | None:
        return self.adapter if self.adapter.supports(pipeline) else None


def test_an_adapter_with_only_the_required_methods_runs_ralu_and_ras() -> None:
    bare = BarePlugin()
    pm = create_plugin_manager(plugins=[bare])
    toy = ToyPlugin()
    reference = create_plugin_manager(plugins=[toy])
    for recipe in ("ralu-toy", "ras-drop"):
        text = {
            "ralu-toy": "name: ralu-toy\nschedule: nt-dm\nstages:\n  - {steps: 2, end: 0.3, level: 1}\n"
            "  - {steps: 2, end: 0.45, transition: nt-dm-upsample, selector: {name: random, ratio: 0.5}}\n"
            "  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}\n",
            "ras-drop": RAS_DROP,
        }[recipe]
        ours = accelerate(ToyPipeline(), load_recipe_text(text), plugin_manager=pm)
        theirs = accelerate(ToyPipeline(), load_recipe_text(text), plugin_manager=reference)
        call = {"height": 64, "width": 64, "generator": seeded_generators(0)}
        assert torch.equal(ours("x", **call).images, theirs("x", **{**call, "generator": seeded_generators(0)}).images)
    adapter = bare.adapter
    assert not isinstance(adapter, CountsFlops | EmbedsModels | CachedAttention | DescribesBlocks)
    assert embedded_models(adapter) == () and adapter_facts(adapter).block_features == {}
    with pytest.raises(RaluError, match="the 'bare' adapter counts no FLOPs"):
        counting(adapter)


def test_a_capability_the_adapter_lacks_is_refused_when_the_recipe_is_bound() -> None:
    pm = create_plugin_manager(plugins=[BarePlugin()])
    with pytest.raises(RecipeError, match=r"the 'bare' adapter cannot keep the keys and values .* `inactive: drop`"):
        accelerate(ToyPipeline(), load_recipe_text(RAS_KV), plugin_manager=pm)


def test_a_call_binds_its_arguments_once_and_prepares_once(toy_pm, toy_plugin, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    binds = []
    original = ToyAdapter.bind

    def counted(self: ToyAdapter, *args: Any) -> BoundCall:
        binds.append(args[1:])
        return original(self, *args)

    monkeypatch.setattr(ToyAdapter, "bind", counted)
    fast = accelerate(ToyPipeline(), load_recipe_text(RAS_DROP), plugin_manager=toy_pm)
    fast("x", height=64, width=32)
    assert len(binds) == 1 and len(toy_plugin.adapter.calls) == 1


def test_a_bound_call_says_how_it_runs() -> None:
    with pytest.raises(TypeError, match="either `prepare`"):
        BoundCall(denoiser=None)
    with pytest.raises(TypeError, match="its token grid and the pipeline's default steps"):
        BoundCall(denoiser=None, prepare=lambda: None)  # type: ignore[arg-type,return-value]
