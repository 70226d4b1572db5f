"""Loading recipes from YAML: safe_load, strict structuring, errors with the path of each field.

Strict means: unknown keys are errors, and scalars keep their YAML type (``steps: "3"`` or
``rewind: "no"`` are refused instead of coerced). All problems are reported together, each as
``$.stages[1].end: <what is wrong>``.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from ralu_core.errors import ConfigFieldError, RecipeError
from ralu_core.recipes.model import CacheRef, Recipe, StrategyRef
from ralu_core.recipes.yaml_source import MAX_RECIPE_BYTES, YamlProblem, parse_recipe_yaml

MAX_STAGES = 16
"""More stages than this is a mistake, not a schedule (RALU uses 3)."""


def _short(value: Any, limit: int = 60) -> str:
    """A repr short enough to quote in an error message, whatever the value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _strict_scalar(kind: type, label: str) -> Any:
    def structure(value: Any, _: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise ValueError(f"expected a number of sensible size, got {_short(value)}")
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"expected {label}, got {type(value).__name__} {_short(value)}{_quoted_hint(value, kind)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {_short(value)}")
        return value

    return structure


def _quoted_hint(value: Any, kind: type) -> str:
    """Why a number arrived as text, where it did: quotes, or PyYAML's rule for exponents."""
    if kind not in (int, float) or not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if kind is int and not number.is_integer():
        return ""
    mantissa, _, exponent = value.strip().lower().partition("e")
    if exponent and "." not in mantissa:
        return f" (YAML reads {value} as text: an exponent needs a dot in the mantissa, {mantissa}.0e{exponent})"
    return " (write it without quotes)"


def _is_variadic_tuple(type_: Any) -> bool:
    args = typing.get_args(type_)
    return typing.get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] is not CacheRef


def _variadic_tuple_hook(converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """`tuple[X, ...]` fields (`dense_steps: [12, 22]`): a string or a mapping is one error, not one per
    character or key; each element is structured as X, errors carrying their index."""

    def structure(value: Any, type_: Any) -> tuple[Any, ...]:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            hint = f" (a list: [{value}])" if isinstance(value, str) and _quoted_hint(value, int) else ""
            raise ValueError(f"expected a list, got {type(value).__name__} {_short(value)}{hint}")
        element = typing.get_args(type_)[0]
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, element))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(f"@ index {index}", index, element),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_!r}", errors, type_)
        return tuple(items)

    return structure


def make_converter() -> cattrs.Converter:
    """A cattrs converter that forbids extra keys and does not coerce scalars."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, _strict_scalar(int, "an integer"))
    converter.register_structure_hook(float, _strict_scalar(float, "a number"))
    converter.register_structure_hook(bool, _strict_scalar(bool, "true or false"))
    converter.register_structure_hook(str, _strict_scalar(str, "a string"))
    converter.register_structure_hook(StrategyRef, _structure_ref)
    converter.register_structure_hook_func(_is_variadic_tuple, _variadic_tuple_hook(converter))
    converter.register_structure_hook_func(
        lambda t: t == tuple[CacheRef, ...], lambda value, _: structure_cache_list(value)
    )
    return converter


@functools.cache
def shared_converter() -> cattrs.Converter:
    """One `make_converter()` for the process: building one costs about a millisecond per class it structures
    (its hooks are generated on first use), which ``ralu tune`` would pay for each of thousands of candidates.
    Nothing registers hooks on it after it is made."""
    return make_converter()


def _structure_ref(value: Any, _: type) -> StrategyRef:
    return structure_strategy_ref(value)


def structure_strategy_ref(value: Any) -> StrategyRef:
    """``canny-edge`` or ``{name: canny-edge, ratio: 0.2}`` -> StrategyRef; ValueError otherwise."""
    if isinstance(value, str):
        return StrategyRef(name=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a strategy name or a mapping with `name`, got {type(value).__name__}")
    if "name" not in value:
        raise ValueError(f"a strategy needs a `name`; got keys {sorted(value)}")
    name = value["name"]
    if not isinstance(name, str):
        raise ValueError(f"a strategy `name` must be a string, got {name!r}")
    return StrategyRef(name=name, params={k: v for k, v in value.items() if k != "name"})


def structure_cache_list(value: Any) -> tuple[CacheRef, ...]:
    """``none``, one cache (a name or a mapping) or a list of them -> CacheRefs; ValueError otherwise."""
    if value == "none" or value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    caches, problems = [], []
    for index, item in enumerate(items):
        where = isinstance(value, list)
        try:
            caches.append(_structure_cache(item))
        except ValueError as exc:
            problems.append(f"item {index}: {exc}" if where else str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(c for c in caches if c.name != "none")


def _structure_cache(item: Any) -> CacheRef:
    ref = structure_strategy_ref(item)
    params = dict(ref.params)
    stages = params.pop("stages", None)
    if stages is not None:
        if not isinstance(stages, list) or not stages:
            raise ValueError(
                f"`stages` of cache {ref.name!r} must be a non-empty list of stage indices, got {_short(stages)}"
            )
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in stages):
            raise ValueError(
                f"`stages` of cache {ref.name!r} must list stage indices (0, 1, ...), got {_short(stages)}"
            )
        if len(set(stages)) != len(stages):
            raise ValueError(f"`stages` of cache {ref.name!r} lists a stage twice: {_short(stages)}")
        stages = tuple(stages)
    return CacheRef(name=ref.name, params=params, stages=stages)


_FIELD = "\x00"


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ConfigFieldError):
        return f"{_FIELD}{exc.field}{_FIELD}{exc}"
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown field(s) {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, TypeError) and type_ is not None:
        name = getattr(type_, "__name__", str(type_))
        return f"expected {name}: {exc}"
    return str(exc)


def error_messages(exc: BaseException, path: str = "$") -> list[str]:
    """cattrs validation errors -> ``["$.a.b: message", ...]``."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        messages = cattrs.transform_error(exc, path=path, format_exception=_format_exception)
    else:
        messages = [f"{_format_exception(exc, None)} @ {path}"]
    out = []
    for message in messages:
        text, _, where = message.rpartition(" @ ")
        if text.startswith(_FIELD):
            field, _, text = text[1:].partition(_FIELD)
            where = f"{where}.{field}"
        out.append(f"{where}: {text}" if where else message)
    return out


def structure_strict(data: Any, cls: type[Any], source: str, path: str = "$") -> Any:
    """Structure `data` into attrs class `cls`, raising RecipeError with paths on failure."""
    if data is None and path == "$":
        raise RecipeError(source, ["the recipe is empty; start from `ralu recipes show ralu-flux-7x`"])
    if not isinstance(data, Mapping):
        raise RecipeError(source, [f"{path}: expected a mapping, got {type(data).__name__} {_short(data)}"])
    try:
        return shared_converter().structure(dict(data), cls)
    except (ClassValidationError, IterableValidationError) as exc:
        raise RecipeError(source, error_messages(exc, path)) from None
    except ConfigFieldError as exc:
        raise RecipeError(source, [f"{path}.{exc.field}: {exc}"]) from None
    except (ValueError, TypeError) as exc:
        raise RecipeError(source, [f"{path}: {exc}"]) from None


def load_recipe_text(text: str | bytes, source: str = "<string>") -> Recipe:
    """Parse YAML text into a Recipe (structure only; names are checked by `resolve_recipe`).

    Whatever the input, the only exception is `RecipeError`, naming `source`.
    """
    try:
        data = parse_recipe_yaml(text)
    except YamlProblem as exc:
        raise RecipeError(source, [str(exc)]) from None
    recipe: Recipe = structure_strict(data, Recipe, source)
    if not recipe.stages:
        raise RecipeError(source, ["$.stages: a recipe needs at least one stage"])
    if len(recipe.stages) > MAX_STAGES:
        raise RecipeError(source, [f"$.stages: at most {MAX_STAGES} stages, got {len(recipe.stages)}"])
    return recipe


def load_recipe_file(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(str(path), [f"{path.stat().st_size:,} bytes is too large for a recipe"])
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    return load_recipe_text(data, source=str(path))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False)


def recipe_fields() -> list[str]:
    """Top-level recipe keys, for docs and error hints."""
    return [f.name for f in attrs.fields(Recipe)]
