"""``ralu plugins``: installed plugins and what each registers."""

from __future__ import annotations

import argparse

from ralu_core.cli.common import installed_registry
from ralu_core.pipelines.adapter import embedded_models
from ralu_core.plugins import KIND_LABELS, plugin_info


def run(ns: argparse.Namespace) -> int:
    registry = installed_registry()
    provided: dict[str, list[str]] = {}
    for kind, table in registry.strategies.items():
        for name, entry in table.items():
            provided.setdefault(entry.plugin, []).append(f"{KIND_LABELS[kind]} {name}")
    for name, entry in registry.adapters.items():
        provided.setdefault(entry.plugin, []).append(f"model adapter {name}")
        for model in embedded_models(entry.obj):
            provided[entry.plugin].append(f"model {model} ({name}, embedded, random weights)")
    for name, entry in registry.recipes.items():
        provided.setdefault(entry.plugin, []).append(f"recipe {name}")
    for name, entry in registry.metrics.items():
        provided.setdefault(entry.plugin, []).append(f"image metric {name}")
    for name, entry in registry.prompt_sets.items():
        provided.setdefault(entry.plugin, []).append(f"prompt set {name}")
    for name, entry in registry.models.items():
        default = ", default" if entry.obj.default else ""
        provided.setdefault(entry.plugin, []).append(f"model {name} ({entry.obj.adapter}{default})")
    for plugin_name in sorted(provided):
        info = plugin_info(registry.pm, plugin_name)
        origin = f"{info.distribution} {info.version}" if info.distribution else "registered in code"
        print(f"{plugin_name} ({origin})")
        for item in sorted(provided[plugin_name]):
            print(f"    {item}")
    return 0
