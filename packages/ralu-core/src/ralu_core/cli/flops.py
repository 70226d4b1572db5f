"""``ralu flops``: a recipe's FLOPs on a full-size architecture, counted on the meta device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ralu_core.cli.common import default_adapter, installed_registry
from ralu_core.errors import RaluError, did_you_mean
from ralu_core.measurement.accounting import recipe_cost, sampler_cost
from ralu_core.measurement.profile import FlopsProfile, architectures, counting
from ralu_core.pipelines.adapter import bind_to_adapter
from ralu_core.plugins import Registry
from ralu_core.recipes import Recipe, RecipeRuntime, find_recipe, resolve_recipe
from ralu_core.sampling.contract import ModelAdapter


def counted_runtime(registry: Registry, model: str, recipe: Recipe) -> tuple[RecipeRuntime, FlopsProfile]:
    """The recipe resolved and bound to the adapter of `model` (an architecture, a pipeline folder or a named
    model), as a
    call would be, and its counting profile; a recipe tuned for another model family is refused (as `generate`
    does)."""
    runtime = resolve_recipe(recipe, registry)
    named = registry.models.get(model)
    if named is not None:  # a model `generate` and `bench` take by name: count what it is made of
        source = named.obj.flops_source()
        if source is None:
            raise RaluError(
                f"model {model!r} stores no configuration to count; give its architecture or pipeline folder"
            )
        model = source
    adapter = _flops_adapter(registry, model)
    if recipe.model is not None and recipe.model != adapter.name:
        raise RaluError(
            f"recipe {recipe.name} is for {recipe.model!r} pipelines and {model} is a {adapter.name!r} "
            "architecture; pick a recipe for it (`ralu recipes list`)"
        )
    profile = counting(adapter).flops_profile(model)
    bind_to_adapter(adapter, runtime)
    return runtime, profile


def _flops_adapter(registry: Registry, model: str) -> ModelAdapter:
    for entry in registry.adapters.values():
        if model in architectures(entry.obj):
            return entry.obj  # type: ignore[no-any-return]
    index = Path(model) / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name")
        for entry in registry.adapters.values():
            if class_name in entry.obj.pipeline_classes:
                return entry.obj  # type: ignore[no-any-return]
        raise RaluError(f"no installed adapter handles {class_name} (from {index})")
    known = sorted(a for e in registry.adapters.values() for a in architectures(e.obj))
    raise RaluError(
        f"unknown model {model!r}{did_you_mean(model, known)}: give an architecture ({', '.join(known)}) "
        "or a pipeline folder"
    )


def default_architecture(registry: Registry, recipe: Recipe) -> str:
    """What `ralu flops` counts when no --model is given: the first architecture of the recipe's adapter, or of
    the default adapter for a recipe that names no model."""
    entry = registry.adapters.get(recipe.model) if recipe.model else None
    adapter = entry.obj if entry is not None else default_adapter(registry)
    names = architectures(adapter)
    if not names:
        raise RaluError(f"the {adapter.name!r} adapter counts no FLOPs; give --model ARCHITECTURE|FOLDER")
    return names[0]


def run(ns: argparse.Namespace) -> int:
    registry = installed_registry()
    recipe = find_recipe(ns.recipe, registry)
    runtime, profile = counted_runtime(registry, ns.model or default_architecture(registry, recipe), recipe)
    text = ns.text_encoders == "include"
    other = against_profile(registry, ns) if ns.against else None
    if text:
        for counted in (profile, other):
            if counted is not None and counted.text_encoders() is None:
                raise RaluError(
                    f"ralu does not count {counted.name}'s text encoders; leave out --text-encoders include"
                )
    cost = recipe_cost(
        runtime, profile, ns.height, ns.width, steps=ns.steps, baseline_steps=ns.baseline_steps, text_encoders=text
    )
    include = ns.attention == "include"
    report = cost.to_dict(include)
    if other is not None:
        report["against"] = against(other, ns, cost)
    if ns.json:
        print(json.dumps(report, indent=2))
        return 0
    label = "linear layers and attention" if include else "linear layers only, attention not counted"
    encoders = "text encoders included" if text else "text encoders excluded"
    print(f"{recipe.name} on {profile.name} at {ns.height}x{ns.width} ({label}; {encoders})")
    for k, stage in enumerate(report["stages"]):
        cached = {kind: n for kind, n in stage["step_kinds"].items() if kind != "full"}
        notes = [f"{n} {kind}" for kind, n in cached.items()]
        sparse = [n for n in stage["step_tokens"] if n < stage["image_tokens"]]
        if sparse:
            seen = "attending to all via cached keys/values" if stage["inactive"] == "kv-cache" else "others dropped"
            span = f"{min(sparse)}" if min(sparse) == max(sparse) else f"{min(sparse)} to {max(sparse)}"
            notes.append(f"{len(sparse)} sparse steps computing {span} tokens, {seen}")
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(
            f"  stage {k}: {stage['image_tokens']:>6} image tokens x {stage['steps']:>2} steps "
            f"= {stage['tflops']:9.2f} TFLOPs{note}"
        )
    print(f"  final VAE decode        = {report['final_decode_tflops']:9.2f} TFLOPs")
    if text:
        print(f"  text encoders           = {report['text_encoder_tflops']:9.2f} TFLOPs")
    if cost.adaptive_caches:
        print(
            f"  adaptive cache(s) {', '.join(cost.adaptive_caches)} counted as full: their savings depend on the run "
            "(ralu bench measures them)"
        )
    print(
        f"  total {report['tflops']:.2f} TFLOPs vs baseline ({cost.baseline_steps} steps) "
        f"{report['baseline_tflops']:.2f} TFLOPs: {report['speedup']:.2f}x"
    )
    other = report["conventions"]["with_attention" if not include else "linear_only"]
    print(f"  ({'with' if not include else 'without'} attention: {other['speedup']:.2f}x)")
    if ns.against:
        quoted = report["against"]
        mine = quoted["with_attention" if include else "linear_only"]
        print(
            f"  vs {quoted['model']} ({quoted['steps']} steps) {mine['baseline_tflops']:.2f} TFLOPs: "
            f"{mine['speedup']:.2f}x; its own baseline vs it: {mine['baseline_speedup']:.2f}x"
        )
    return 0


def against_profile(registry: Registry, ns: argparse.Namespace) -> FlopsProfile:
    """--against's counting profile (an architecture, a pipeline folder or a named model), one pass per step where
    --against-cfg is off."""
    model = ns.against
    named = registry.models.get(model)
    if named is not None and named.obj.flops_source() is not None:
        model = named.obj.flops_source()
    profile = counting(_flops_adapter(registry, model)).flops_profile(model)
    return profile.without_guidance_batch() if ns.against_cfg == "off" else profile


def against(profile: FlopsProfile, ns: argparse.Namespace, cost: Any) -> dict[str, Any]:
    """The recipe and its own baseline quoted against another architecture's plain sampler (--against), in both
    conventions."""
    other_steps = ns.against_steps or profile.baseline_steps
    other = sampler_cost(profile, ns.height, ns.width, other_steps, text_encoders=ns.text_encoders == "include")

    def convention(flag: bool) -> dict[str, float]:
        return {
            "baseline_tflops": other.tflops(flag),
            "speedup": other.tflops(flag) / cost.total.tflops(flag),
            "baseline_speedup": other.tflops(flag) / cost.baseline.tflops(flag),
        }

    return {
        "model": profile.name,
        "steps": other_steps,
        "linear_only": convention(False),
        "with_attention": convention(True),
    }
