"""The core's modules import one way: plain data and protocols at the bottom, the engine above them,
plugins and recipes above that, the CLI on top. A cycle (even one only type checkers follow) means a
layer reaches up, and the package no longer reads bottom to top."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ralu_core

ROOT = Path(ralu_core.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the core modules it imports (anywhere in it, TYPE_CHECKING blocks included; importing a
    submodule does not count as importing its package's __init__)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ralu_core":
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                graph[name].update(submodules)
                if node.module in modules and len(submodules) < len(node.names):
                    graph[name].add(node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
        graph[name].discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_engine_does_not_depend_on_plugins_recipes_or_the_cli() -> None:
    graph = import_graph()
    reachable, todo = set(), ["ralu_core.sampling.engine"]
    while todo:
        for target in graph[todo.pop()] - reachable:
            reachable.add(target)
            todo.append(target)
    assert not reachable & {
        "ralu_core.plugins",
        "ralu_core.recipes.resolve",
        "ralu_core.measurement.bench",
        "ralu_core.cli",
    }


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_public_names_load_on_first_use_and_are_never_shadowed_by_a_module() -> None:
    """`ralu_core.accelerate` stays the function whatever submodules were imported before (a submodule of the
    same name would replace a lazily loaded attribute), and every public name is what its module defines."""
    import importlib

    for path in ROOT.rglob("*.py"):
        if path.name != "__main__.py":  # runs the command line
            importlib.import_module(module_name(path))
    for name in ralu_core.__all__:
        value = getattr(ralu_core, name)
        assert not inspect.ismodule(value), f"ralu_core.{name} is a module"
        assert getattr(value, "__name__", name) == name
    assert callable(ralu_core.accelerate)


def test_the_cli_is_on_top_and_its_parser_is_light() -> None:
    """The command line (one module per command) is the application layer: nothing else in the core imports
    it, and its parser imports no command (so `ralu --help` loads neither torch nor a model library)."""
    graph = import_graph()
    cli = {m for m in graph if m == "ralu_core.cli" or m.startswith("ralu_core.cli.")}
    assert {m for m in graph if graph[m] & cli} - cli == set()
    assert graph["ralu_core.cli.parser"] <= {"ralu_core.pipelines.compiling", "ralu_core.errors"}
    commands = {"generate", "recipes", "plugins", "schedule", "flops", "bench", "compare"}
    assert {m.rsplit(".", 1)[1] for m in cli} >= commands


LAYERS = (
    ("base", ("ralu_core.errors", "ralu_core.files")),
    ("sampling core", ("ralu_core.sampling", "ralu_core.strategies", "ralu_core.recipes", "ralu_core.plugins")),
    ("diffusers base", ("ralu_core.pipelines",)),
    ("measurement", ("ralu_core.measurement",)),
    ("tuning", ("ralu_core.tuning",)),
    ("application", ("ralu_core.cli", "ralu_core.testing")),
)
"""The core's groups, bottom to top: a module may import from its own group and the ones below, never above."""


def layer_of(module: str) -> int | None:
    if module == "ralu_core":  # the package's public names are the top of the stack (`accelerate`)
        return len(LAYERS) - 1
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_every_module_belongs_to_a_group_and_imports_only_downwards() -> None:
    graph = import_graph()
    unplaced = sorted(m for m in graph if m != "ralu_core" and layer_of(m) is None)
    assert unplaced == [], f"modules outside every group: {unplaced}"
    upward = sorted(
        f"{m} ({LAYERS[layer_of(m) or 0][0]}) imports {t} ({LAYERS[layer_of(t) or 0][0]})"
        for m, targets in graph.items()
        for t in targets
        if m != "ralu_core" and (layer_of(t) or 0) > (layer_of(m) or 0)
    )
    assert upward == [], "\n".join(upward)
    groups = {m: m.split(".")[1] if "." in m else "" for m in graph}
    apart = [(m, t) for m, ts in graph.items() for t in ts if {groups[m], groups[t]} == {"cli", "testing"}]
    assert apart == []  # the command line and the test tools stand side by side
