"""Second pass over a recipe, once plugins are loaded: names -> strategy objects.

Each strategy's parameters are structured against the config class its plugin declared, with
the same strictness and paths as the first pass; unknown names list the registered ones; and
the combination is checked (a multi-stage recipe must start at half resolution and end with a
transition that upsamples everything, the schedule must suit the stages and the transitions).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ralu_core.errors import RecipeError, did_you_mean
from ralu_core.plugins import KIND_LABELS, Registry
from ralu_core.recipes.loader import (
    load_recipe_file,
    shared_converter,
    structure_cache_list,
    structure_strategy_ref,
    structure_strict,
)
from ralu_core.recipes.model import Recipe, Stage, StrategyRef
from ralu_core.recipes.yaml_source import YamlProblem, parse_recipe_yaml
from ralu_core.sampling.runtime import RecipeRuntime, RuntimeCache, RuntimeStage
from ralu_core.sampling.tokens import FULL, HALF
from ralu_core.strategies.base import (
    StagePlanSpec,
    TimestepSchedule,
)

MAX_STAGE_STEPS = 1000
"""Euler steps per stage; flow-matching schedulers are trained on 1000 timesteps, so more is a typo."""


def find_recipe(source: str | Path | Recipe, registry: Registry) -> Recipe:
    """A Recipe from a Recipe, a built-in name or a YAML path."""
    if isinstance(source, Recipe):
        return source
    text = str(source)
    entry = registry.recipes.get(text)
    if entry is not None:
        if not Path(entry.obj).is_file():
            raise RecipeError(
                text,
                [f"plugin {entry.plugin!r} registered this recipe as {entry.obj}, which does not exist; reinstall it"],
            )
        return _load_reporting_everything(entry.obj, registry)
    path = Path(text)
    if path.is_file():
        return _load_reporting_everything(path, registry)
    known = ", ".join(sorted(registry.recipes)) or "none installed"
    hint = did_you_mean(text, registry.recipes)
    raise RecipeError(text, [f"no built-in recipe of that name and no such file{hint}; built-in recipes: {known}"])


def _load_reporting_everything(path: Path, registry: Registry) -> Recipe:
    """Load a recipe file; if its structure is wrong, also check the strategies it names, so that one
    run shows every problem of the file rather than the structural ones first."""
    try:
        return load_recipe_file(path)
    except RecipeError as exc:
        extra = [p for p in _named_strategy_problems(path, registry) if p not in exc.problems]
        if not extra:
            raise
        raise RecipeError(exc.source, [*exc.problems, *extra]) from None


INACTIVE_MODES = ("kv-cache", "drop")
"""How a sparse step's inactive tokens take part in attention (a stage's `inactive`)."""

_STAGE_STRATEGIES = (("transition", "transition"), ("selector", "token_selector"), ("step_tokens", "token_selector"))


def _named_strategy_problems(path: Path, registry: Registry) -> list[str]:
    """The problems a malformed recipe file has beyond its structure: unknown names and bad parameters of
    every strategy it names and, when its stages themselves parse, the rules that relate them."""
    try:
        data = parse_recipe_yaml(path.read_bytes())
    except (OSError, YamlProblem):
        return []  # already reported by the loader
    if not isinstance(data, Mapping):
        return []
    builder = _Builder(str(path), registry)

    def build(raw: Any, kind: str, where: str) -> Any:
        if raw is None:
            return None
        try:
            ref = structure_strategy_ref(raw)
        except ValueError:
            return None  # a malformed reference is a structural problem, reported by the loader
        return builder.build(ref, kind, where)

    schedule = build(data.get("schedule"), "schedule", "$.schedule")
    try:
        caches = structure_cache_list(data.get("cache"))
    except ValueError:
        caches = ()  # malformed: reported by the loader
    for index, cache in enumerate(caches):
        build(cache.strategy.to_yaml(), "feature_cache", f"$.cache[{index}]")
    raw_stages = data.get("stages")
    try:
        stages: tuple[Stage, ...] = shared_converter().structure(raw_stages, tuple[Stage, ...])
    except Exception:  # the stages are malformed: check what each names, the loader reports the rest
        for index, stage in enumerate(raw_stages if isinstance(raw_stages, list) else []):
            if isinstance(stage, Mapping):
                for key, kind in _STAGE_STRATEGIES:
                    build(stage.get(key), kind, f"$.stages[{index}].{key}")
        return builder.problems
    if stages:
        runtime_stages = [_resolve_stage(builder, stage, index) for index, stage in enumerate(stages)]
        partial = Recipe(name=str(path), schedule=StrategyRef(name="none"), stages=stages)
        _check_structure(builder, partial, runtime_stages, schedule)
    return builder.problems


class _Builder:
    def __init__(self, source: str, registry: Registry) -> None:
        self.source = source
        self.registry = registry
        self.problems: list[str] = []

    def build(self, ref: StrategyRef, kind: str, path: str) -> Any:
        cls = self.registry.strategy_class(kind, ref.name)
        if cls is None:
            known = ", ".join(self.registry.names(kind)) or "none"
            self.problems.append(f"{path}.name: unknown {KIND_LABELS[kind]} {ref.name!r}; registered: {known}")
            return None
        try:
            config = structure_strict(ref.params, cls.Config, self.source, path)
        except RecipeError as exc:
            self.problems += exc.problems
            return None
        strategy = cls(config)
        strategy.plugin = self.registry.strategies[kind][ref.name].plugin
        return strategy


def resolve_recipe(recipe: Recipe, registry: Registry) -> RecipeRuntime:
    """Build and cross-check all strategies of `recipe`; every problem is reported at once."""
    b = _Builder(recipe.name, registry)
    schedule = b.build(recipe.schedule, "schedule", "$.schedule")
    stages = []
    for index, stage in enumerate(recipe.stages):
        stages.append(_resolve_stage(b, stage, index))
    caches = _resolve_caches(b, recipe, stages)
    _check_structure(b, recipe, stages, schedule)
    if b.problems:
        raise RecipeError(recipe.name, b.problems)
    return RecipeRuntime(recipe=recipe, schedule=schedule, stages=tuple(stages), caches=caches)


def _resolve_caches(b: _Builder, recipe: Recipe, stages: list[RuntimeStage]) -> tuple[RuntimeCache, ...]:
    built = []
    for index, ref in enumerate(recipe.cache):
        path = f"$.cache[{index}]"
        cache = b.build(ref.strategy, "feature_cache", path)
        outside = [s for s in ref.stages or () if s >= len(stages)]
        if outside:
            b.problems.append(
                f"{path}.stages: the recipe has stages 0 to {len(stages) - 1}, got {', '.join(map(str, outside))}"
            )
        if cache is None:
            continue
        working = range(len(stages)) if ref.stages is None else ref.stages
        sparse = [s for s in working if s < len(stages) and stages[s].step_tokens is not None]
        if cache.forecasts and sparse:
            b.problems.append(
                f"{path}: {cache.name!r} forecasts every token's velocity, but stage(s) "
                f"{', '.join(map(str, sparse))} compute a subset of tokens per step (step_tokens); "
                "limit the cache with `stages:` to the other stages"
            )
        known = {s: count for s in working if s < len(stages) and (count := recipe.stages[s].steps) is not None}
        b.problems += [f"{path}: {problem}" for problem in cache.check_stages(known)]
        if cache.keeps_block_features and sparse:
            b.problems.append(
                f"{path}: {cache.name!r} reuses block features of earlier steps token by token, but stage(s) "
                f"{', '.join(map(str, sparse))} compute a different subset of tokens at each step (step_tokens); "
                "limit the cache with `stages:` to the other stages"
            )
        built.append(RuntimeCache(cache=cache, stages=None if ref.stages is None else frozenset(ref.stages)))
    return tuple(built)


def _resolve_stage(b: _Builder, stage: Stage, index: int) -> RuntimeStage:
    path = f"$.stages[{index}]"
    if stage.steps is not None and not 1 <= stage.steps <= MAX_STAGE_STEPS:
        b.problems.append(f"{path}.steps: must be from 1 to {MAX_STAGE_STEPS}, got {stage.steps}")
    if index == 0:
        if stage.transition is not None or stage.selector is not None:
            b.problems.append(f"{path}: the first stage has no transition or selector (nothing comes before it)")
        if stage.level not in (None, FULL, HALF):
            b.problems.append(f"{path}.level: must be 0 (full resolution) or 1 (half resolution), got {stage.level}")
    else:
        if stage.level is not None:
            b.problems.append(f"{path}.level: only the first stage sets a level; later ones follow from transitions")
        if stage.transition is None:
            b.problems.append(f"{path}.transition: required for every stage after the first")
        if stage.selector is None:
            b.problems.append(f"{path}.selector: required for every stage after the first (e.g. `all`)")
    transition = b.build(stage.transition, "transition", f"{path}.transition") if stage.transition else None
    selector = b.build(stage.selector, "token_selector", f"{path}.selector") if stage.selector else None
    step_tokens = b.build(stage.step_tokens, "token_selector", f"{path}.step_tokens") if stage.step_tokens else None
    if step_tokens is not None and stage.steps is not None and 1 <= stage.steps <= MAX_STAGE_STEPS:
        b.problems += [f"{path}.step_tokens: {p}" for p in step_tokens.check_steps(stage.steps)]
    if stage.inactive is not None and stage.inactive not in INACTIVE_MODES:
        b.problems.append(
            f"{path}.inactive: must be one of {', '.join(INACTIVE_MODES)}, got {stage.inactive!r} (kv-cache: the "
            "tokens a step does not compute join its attention through cached keys and values, as RAS does; drop: "
            "they do not)"
        )
    if stage.inactive is not None and stage.step_tokens is None:
        b.problems.append(f"{path}.inactive: only for a stage with `step_tokens` (every token is computed otherwise)")
    return RuntimeStage(
        spec=StagePlanSpec(steps=stage.steps, end=stage.end),
        transition=transition,
        selector=selector,
        step_tokens=step_tokens,
        cached_attention=stage.step_tokens is not None and stage.inactive != "drop",
    )


def _check_structure(
    b: _Builder, recipe: Recipe, stages: list[RuntimeStage], schedule: TimestepSchedule | None
) -> None:
    transitions = len(stages) - 1
    if transitions and recipe.start_level == FULL:
        b.problems.append(
            "$.stages[0].level: a multi-stage recipe upsamples half-resolution tokens, so it must start at level 1"
        )
    if recipe.start_level == HALF:
        if not transitions:
            b.problems.append("$.stages: a recipe that starts at half resolution needs a transition to full resolution")
        else:
            last = stages[-1].selector
            if last is not None and not last.covers_all:
                b.problems.append(
                    f"$.stages[{transitions}].selector: the last transition must upsample every remaining token "
                    f"(use `all`), got {last.name!r}"
                )
    if schedule is None:
        return
    b.problems += schedule.check([s.spec for s in stages])
    rewinds = schedule.rewinds
    for index, stage in enumerate(stages[1:], start=1):
        if stage.transition is not None and stage.transition.rewinds != rewinds:
            wants = "rewinds toward noise" if stage.transition.rewinds else "does not rewind"
            b.problems.append(
                f"$.stages[{index}].transition: {stage.transition.name!r} {wants} at transitions but schedule "
                f"{schedule.name!r} {'does' if rewinds else 'does not'}; pair nt-dm-upsample with nt-dm, "
                "naive-upsample with nt-dm `rewind: false`"
            )
