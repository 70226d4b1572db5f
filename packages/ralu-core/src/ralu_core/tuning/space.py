"""The candidates ``ralu tune`` considers for one model, generated from what the plugins registered.

Nothing here names a strategy. Upsample selectors, step selectors (RAS) and feature caches come from the
registry, each with the values its class declares in `tune_space` (a strategy that declares none is not
searched, and the report says so). The stage plans are RALU's three-stage shape (half resolution, the selected
tokens, everything) over a grid of step counts and stage ends, scheduled by NT-DM solved for each plan. The
controls are the model's own sampler with fewer steps: a recipe that fewer steps beat is never recommended.
The adapter's registered recipes join as they are (their published schedules), marked as built-in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from ralu_core.errors import RaluError
from ralu_core.plugins import Registry
from ralu_core.recipes.model import CacheRef, Recipe, Stage, StrategyRef

STAGE_STEPS = ((2, 3, 4, 5), (2, 3, 5), (3, 5, 7, 10, 14))
"""Steps tried in RALU's three stages (the published plans: 2/3/5 to 5/6/7 on FLUX.1-dev, 3/3/6 on SD3)."""
STAGE_ENDS = ((0.2, 0.3), (0.25, 0.3), (0.3, 0.45))
"""Where the first two stages end in t (the published plans' three pairs)."""
RAS_STEP_SHARES = (1.0, 0.75, 0.5)
"""RAS runs on the model's own sampler at these shares of its default steps."""
CACHE_STAGES: tuple[tuple[tuple[int, ...] | None, str], ...] = (
    (None, "every stage"),
    ((2,), "the last stage"),
    ((0, 2), "the first and last stages"),
)
"""Where a cache acts in a RALU plan: everywhere, at full resolution only, or in the two stages whose token set
stays fixed (the built-in rows of the RALU paper's Table 2 cache there)."""

FEWER_STEPS = "fewer steps"
RALU = "ralu"
RAS = "ras"
RALU_RAS = "ralu + ras"
RALU_CACHE = "ralu + cache"
STEPS_CACHE = "fewer steps + cache"
BUILTIN = "built-in"


@attrs.frozen(kw_only=True)
class Candidate:
    """One recipe tune may recommend, with a key that names its content (not its name)."""

    key: str
    family: str
    label: str
    recipe: Recipe
    builtin: str | None = None
    """The registered recipe this is, where it is one."""


def content_key(recipe: Recipe) -> str:
    """Ten hex digits of a hash of what the recipe does (its name and description left out)."""
    data = recipe.to_yaml_dict()
    data.pop("name", None)
    data.pop("description", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:10]


def flops_signature(recipe: Recipe) -> str:
    """What a recipe's FLOPs depend on: everything but its name, its stage ends and its schedule's parameters
    (where a stage ends in t, and how its sigmas are spaced, change no token count and no step)."""
    data = recipe.to_yaml_dict()
    for field in ("name", "description"):
        data.pop(field, None)
    schedule = data.pop("schedule")
    data["schedule"] = schedule if isinstance(schedule, str) else schedule["name"]
    data["stages"] = [{k: v for k, v in stage.items() if k != "end"} for stage in data["stages"]]
    return json.dumps(data, sort_keys=True)


def addition(recipe: Recipe) -> str:
    """What a candidate adds to its plan, by content: its caches (without their stages) and the step selector of
    its stages. Candidates that add the same thing to different plans share it (see ``count_candidates``)."""
    caches = [{"name": c.name, "params": dict(c.params)} for c in recipe.cache]
    steps = [stage.step_tokens.to_yaml() for stage in recipe.stages if stage.step_tokens is not None]
    return json.dumps({"caches": caches, "step_tokens": steps[-1:]}, sort_keys=True, default=repr)


def make_candidate(recipe: Recipe, family: str, label: str, builtin: str | None = None) -> Candidate:
    key = content_key(recipe)
    named = attrs.evolve(recipe, name=builtin or f"tune-{key}", description=recipe.description or label)
    return Candidate(key=key, family=family, label=label, recipe=named, builtin=builtin)


def variants(cls: type, space: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of the values `cls.tune_space` declares (one empty set of parameters where it declares
    none to vary)."""
    declared = dict(space if space is not None else getattr(cls, "tune_space", None) or {})
    names = sorted(declared)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(declared[n] for n in names))]


def describe(name: str, params: Mapping[str, Any]) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{name}({inner})" if inner else name


@attrs.frozen(kw_only=True)
class Searched:
    """The registered strategies tune searches, and those it leaves out (with why)."""

    upsample: tuple[tuple[str, dict[str, Any]], ...]
    step: tuple[tuple[str, dict[str, Any]], ...]
    caches: tuple[tuple[str, dict[str, Any]], ...]
    left_out: tuple[str, ...]


def searched_strategies(registry: Registry) -> Searched:
    upsample: list[tuple[str, dict[str, Any]]] = []
    step: list[tuple[str, dict[str, Any]]] = []
    caches: list[tuple[str, dict[str, Any]]] = []
    left_out: list[str] = []
    for name, entry in sorted(registry.strategies["token_selector"].items()):
        cls = entry.obj
        if cls.covers_all:
            continue
        if cls.tune_space is None:
            left_out.append(f"token selector {name!r} (plugin {entry.plugin}) declares no tune_space")
            continue
        roles = getattr(cls, "tune_roles", ("upsample",))
        for params in variants(cls):
            if "upsample" in roles:
                upsample.append((name, params))
            if "step" in roles:
                step.append((name, params))
    for name, entry in sorted(registry.strategies["feature_cache"].items()):
        cls = entry.obj
        if cls.tune_space is None:
            if name != "none":
                left_out.append(
                    f"feature cache {name!r} (plugin {entry.plugin}) declares no tune_space (an adaptive cache's "
                    "FLOPs are known only after a run)"
                )
            continue
        caches += [(name, params) for params in variants(cls)]
    return Searched(upsample=tuple(upsample), step=tuple(step), caches=tuple(caches), left_out=tuple(left_out))


def check_searchable(searched: Searched, adapter: str) -> None:
    """Refuse a model family none of whose strategies tune may try: it could only compare fewer steps."""
    if not (searched.upsample or searched.step or searched.caches):
        raise RaluError(
            f"no installed strategy for the {adapter!r} adapter declares a tune_space (what ralu tune may try), so "
            "tune could compare nothing but fewer steps; install ralu-core's selectors or a strategy plugin"
        )


@attrs.frozen(kw_only=True)
class ModelSpace:
    """What the search needs to know of the model: its adapter's name and baseline recipe, its default steps,
    whether it can start at half resolution, and its registered recipes."""

    adapter: str
    baseline: Recipe
    default_steps: int
    half_resolution: bool = True
    builtins: tuple[Recipe, ...] = ()


def fewer_steps(model: ModelSpace, steps: int) -> Recipe:
    first = attrs.evolve(model.baseline.stages[0], steps=steps)
    return attrs.evolve(model.baseline, name=f"fewer-{steps}", stages=(first, *model.baseline.stages[1:]))


def ralu_plan(
    model: ModelSpace,
    steps: tuple[int, int, int],
    ends: tuple[float, float],
    selector: tuple[str, Mapping[str, Any]],
    step_tokens: tuple[str, Mapping[str, Any]] | None = None,
) -> Recipe:
    upsample = StrategyRef(name="nt-dm-upsample")
    last = Stage(steps=steps[2], end=1.0, transition=upsample, selector=StrategyRef(name="all"))
    if step_tokens is not None:
        last = attrs.evolve(
            last, step_tokens=StrategyRef(name=step_tokens[0], params=dict(step_tokens[1])), inactive="kv-cache"
        )
    return Recipe(
        name="ralu-plan",
        model=model.adapter,
        schedule=StrategyRef(name="nt-dm"),
        stages=(
            Stage(steps=steps[0], end=ends[0], level=1),
            Stage(
                steps=steps[1],
                end=ends[1],
                transition=upsample,
                selector=StrategyRef(name=selector[0], params=dict(selector[1])),
            ),
            last,
        ),
    )


def with_cache(recipe: Recipe, cache: tuple[str, Mapping[str, Any]], stages: tuple[int, ...] | None) -> Recipe:
    return attrs.evolve(recipe, cache=(CacheRef(name=cache[0], params=dict(cache[1]), stages=stages),))


def ralu_label(steps: Sequence[int], ends: Sequence[float], selector: tuple[str, Mapping[str, Any]]) -> str:
    plan = "/".join(map(str, steps))
    return f"RALU {plan} ends {ends[0]:g}/{ends[1]:g}, {describe(*selector)}"


def structural_candidates(model: ModelSpace, searched: Searched) -> Iterator[tuple[Candidate, Recipe | None]]:
    """Every candidate, each with the recipe whose FLOPs bound it from above where it adds a cache or RAS to
    one (so that combinations of a plan already too slow can be skipped before counting). The built-in recipes
    come last: one that a generated candidate already is (``flux-baseline-5steps``) names that candidate."""
    yield from _generated(model, searched)
    for recipe in model.builtins:
        yield make_candidate(recipe, BUILTIN, recipe.description or recipe.name, builtin=recipe.name), None


def _generated(model: ModelSpace, searched: Searched) -> Iterator[tuple[Candidate, Recipe | None]]:
    for steps in range(1, model.default_steps):
        yield make_candidate(fewer_steps(model, steps), FEWER_STEPS, f"{steps} steps of the model's sampler"), None
    for steps in sorted({max(2, round(model.default_steps * share)) for share in RAS_STEP_SHARES}):
        base = fewer_steps(model, steps)
        for name, params in searched.step:
            stage = attrs.evolve(base.stages[0], step_tokens=StrategyRef(name=name, params=params), inactive="kv-cache")
            recipe = attrs.evolve(base, stages=(stage,))
            yield make_candidate(recipe, RAS, f"{steps} steps, {describe(name, params)}"), base
        for cache in searched.caches:
            yield make_candidate(with_cache(base, cache, None), STEPS_CACHE, f"{steps} steps, {describe(*cache)}"), base
    if not model.half_resolution:
        return
    plans: list[tuple[int, int, int]] = list(itertools.product(*STAGE_STEPS))
    for plan, stage_ends, upsample in itertools.product(plans, STAGE_ENDS, searched.upsample):
        recipe = ralu_plan(model, plan, stage_ends, upsample)
        yield make_candidate(recipe, RALU, ralu_label(plan, stage_ends, upsample)), None
    # Combinations on the first selector variant and stage ends only: the plan's own choices are searched above.
    if not searched.upsample:
        return
    selector, ends = searched.upsample[0], STAGE_ENDS[0]
    for plan in plans:
        base = ralu_plan(model, plan, ends, selector)
        label = ralu_label(plan, ends, selector)
        for step_tokens in searched.step:
            recipe = ralu_plan(model, plan, ends, selector, step_tokens)
            yield make_candidate(recipe, RALU_RAS, f"{label}, last stage {describe(*step_tokens)}"), base
        for cache, (stages, where) in itertools.product(searched.caches, CACHE_STAGES):
            recipe = with_cache(base, cache, stages)
            yield make_candidate(recipe, RALU_CACHE, f"{label}, {describe(*cache)} in {where}"), base
