"""Reading recipe YAML safely: whatever the bytes, either plain data or a list of problems.

Recipes are a few hundred bytes of data, so anything far beyond that is refused before it can cost
time or memory: the file size, how much the document expands to once aliases are followed (a few
hundred bytes of nested aliases can stand for gigabytes), and how deeply it nests. Duplicate keys
are an error rather than PyYAML's silent last-wins, and only string keys are accepted.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_RECIPE_BYTES = 64 * 1024
"""Largest recipe file accepted; the built-in ones are under 1 KiB."""

MAX_EXPANDED_SIZE = 64 * 1024
"""Largest document once every alias is followed, in characters of scalars plus one per node."""

MAX_DEPTH = 16
"""Deepest nesting of mappings and sequences; a recipe needs 4 (stage -> selector -> params -> list)."""


class YamlProblem(Exception):
    """A problem with the YAML text itself; the message is for the user."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicate and non-string keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise YamlProblem(f"line {line}: keys must be strings, got {type(key).__name__} {_short(key)}")
            if key in seen:
                raise YamlProblem(f"line {line}: duplicate key {key!r} (first on line {seen[key]}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_size(root: yaml.Node) -> None:
    """Expanded size and depth of the node graph, each node measured once (aliases share nodes)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels; a recipe needs about 4")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlProblem("an alias refers to a node that contains it; recipes cannot be recursive")
        open_nodes.add(key)
        if isinstance(node, yaml.ScalarNode):
            size = 1 + len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(measure(child, depth + 1) for child in node.value)
        else:
            size = 1 + sum(measure(k, depth + 1) + measure(v, depth + 1) for k, v in node.value)
        open_nodes.discard(key)
        if size > MAX_EXPANDED_SIZE:
            raise YamlProblem(
                f"expands to more than {MAX_EXPANDED_SIZE:,} characters once its aliases are followed; "
                "a recipe is a few hundred"
            )
        sizes[key] = size
        return size

    measure(root, 0)


def parse_recipe_yaml(text: str | bytes) -> Any:
    """Plain data (dicts, lists, scalars) from YAML text; raises `YamlProblem` for anything else."""
    if isinstance(text, bytes):
        if len(text) > MAX_RECIPE_BYTES:
            raise YamlProblem(f"{len(text):,} bytes is too large for a recipe (at most {MAX_RECIPE_BYTES:,})")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlProblem(
                f"not UTF-8 text (byte 0x{text[exc.start]:02x} at offset {exc.start}); save the recipe as UTF-8"
            ) from None
    if len(text) > MAX_RECIPE_BYTES:
        raise YamlProblem(f"{len(text):,} characters is too large for a recipe (at most {MAX_RECIPE_BYTES:,})")
    loader: _RecipeLoader | None = None
    try:
        loader = _RecipeLoader(text)  # its reader already refuses unprintable characters
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except YamlProblem:
        raise
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {_first_lines(str(exc))}") from None
    except RecursionError:
        raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels; a recipe needs about 4") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for explicit tags it cannot honour (`!!int x`, `!!float ''`).
        raise YamlProblem(f"a value YAML cannot read ({type(exc).__name__}: {_first_lines(str(exc))})") from None
    finally:
        if loader is not None:
            loader.dispose()


def _first_lines(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
