"""``ralu recipes list | show NAME | validate FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ralu_core.cli.common import installed_registry
from ralu_core.errors import RecipeError
from ralu_core.pipelines.adapter import adapter_problems
from ralu_core.recipes import find_recipe, resolve_recipe


def run(ns: argparse.Namespace) -> int:
    registry = installed_registry()
    if ns.action == "list":
        rows = [(name, find_recipe(name, registry), entry.plugin) for name, entry in sorted(registry.recipes.items())]
        width = max((len(name) for name, _, _ in rows), default=0)
        for name, recipe, plugin in rows:
            print(f"{name:<{width}}  {recipe.model or 'any':<6} {recipe.description}  [{plugin}]")
        return 0
    if ns.action == "show":
        if ns.target in registry.recipes:
            print(registry.recipes[ns.target].obj.read_text(encoding="utf-8"), end="")
            return 0
        find_recipe(ns.target, registry)  # raises with the list of built-ins
        print(Path(ns.target).read_text(encoding="utf-8"), end="")
        return 0
    runtime = resolve_recipe(find_recipe(ns.target, registry), registry)
    model = runtime.recipe.model
    if model is not None and model in registry.adapters:
        problems = adapter_problems(registry.adapters[model].obj, runtime)
        if problems:
            raise RecipeError(runtime.recipe.name, [f"on {model!r} pipelines: {p}" for p in problems])
    steps = [s.spec.steps for s in runtime.stages]
    print(f"ok: {runtime.recipe.name}: {len(steps)} stage(s), steps {steps}, schedule {runtime.schedule.name}")
    return 0
