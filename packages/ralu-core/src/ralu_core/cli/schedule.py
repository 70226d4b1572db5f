"""``ralu schedule``: the NT-DM schedule of a stage plan or a recipe, solved or published."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ralu_core.cli.common import installed_registry
from ralu_core.errors import RaluError
from ralu_core.measurement.schedule_report import published_for, recipe_schedule
from ralu_core.recipes import find_recipe, resolve_recipe
from ralu_core.sampling.ntdm import solve_ntdm


def _print_stages(data: dict[str, Any]) -> None:
    print(f"steps {data['steps']}  ends {data['ends']}  base shift {data['base_shift']}")
    print(f"c = {data['c']}   JS distance = {data['js_distance']:.5f}")
    for k, (start, end, shift, sigmas) in enumerate(
        zip(data["starts"], data["ends"], data["shifts"], data["sigmas"], strict=True)
    ):
        values = ", ".join(f"{s:.4f}" for s in sigmas)
        print(f"stage {k}: t in [{start:.4f}, {end:.4f}], shift {shift:.4f}, sigmas [{values}]")


def _brief(data: dict[str, Any]) -> str:
    shifts = ", ".join(f"{h:.4g}" for h in data["shifts"])
    starts = ", ".join(f"{s:.4f}" for s in data["starts"][1:])
    return f"shifts {shifts}; c = {data['c']:.4g}; starts {starts}; JS distance {data['js_distance']:.5f}"


def run(ns: argparse.Namespace) -> int:
    if ns.recipe is not None:
        return _schedule_of_recipe(ns)
    if not ns.steps or not ns.ends:
        raise RaluError("give a stage plan (--steps N ... --ends E ...) or a recipe (--recipe NAME)")
    base_shift = 3.0 if ns.base_shift is None else ns.base_shift
    data = solve_ntdm(ns.steps, ns.ends, base_shift).to_dict()
    published = published_for(installed_registry(), ns.steps, ns.ends, base_shift)
    if ns.json:
        data["published"] = [
            {"recipes": list(p.recipes), "source": p.source, **p.solution.to_dict()} for p in published
        ]
        print(json.dumps(data, indent=2))
        return 0
    print("NT-DM solved for this plan:")
    _print_stages(data)
    for p in published:
        print(f"published ({p.source}; run by {', '.join(p.recipes)}): {_brief(p.solution.to_dict())}")
    return 0


def _schedule_of_recipe(ns: argparse.Namespace) -> int:
    registry = installed_registry()
    runtime = resolve_recipe(find_recipe(ns.recipe, registry), registry)
    base_shift = 3.0 if ns.base_shift is None else ns.base_shift
    data = recipe_schedule(runtime, base_shift)
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    if data["sigmas"] is None:
        print(f"{data['recipe']}: {data['note']} (steps {data['steps']})")
        return 0
    mode = data.get("mode")
    label = (
        f"{data['schedule']}" + (f", {mode}" if mode else "") + (f" ({data['source']})" if data.get("source") else "")
    )
    print(f"{data['recipe']}: {label}")
    if "shifts" not in data:  # a plugin's schedule: its sigmas are all we know how to print
        for k, sigmas in enumerate(data["sigmas"]):
            print(f"stage {k}: sigmas [{', '.join(f'{s:.4f}' for s in sigmas)}]")
        return 0
    _print_stages(data)
    if "solved" in data:
        print(f"NT-DM's solver for this plan: {_brief(data['solved'])}")
    return 0
