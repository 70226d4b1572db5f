"""``ralu tune``: the fastest recipe that keeps quality on the user's own model, prompts and FLOPs budget.

    result = ralu_core.tune(pipe, prompts, speedups=[3, 5], seeds=[0, 1, 2], out="tuned")
    fast = ralu_core.accelerate(pipe, "tuned/tuned-5x.yaml")

See `search.py` for how, `space.py` for what is searched and `scoring.py` for the score.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pluggy

from ralu_core.errors import RaluError
from ralu_core.measurement.profile import counting
from ralu_core.pipelines.adapter import RecommendsRecipes
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes.resolve import find_recipe
from ralu_core.sampling.contract import ModelAdapter
from ralu_core.tuning.cost import CostCounter
from ralu_core.tuning.journal import FolderJournal, Journal, MemoryJournal
from ralu_core.tuning.report import write_outputs
from ralu_core.tuning.scoring import Scorer, choose_metrics
from ralu_core.tuning.search import Progress, TuneResult, TuneSettings, run_search, split_samples
from ralu_core.tuning.space import ModelSpace, check_searchable, fewer_steps, searched_strategies
from ralu_core.tuning.workers import OneProcess, Workers

__all__ = ["TuneResult", "tune"]


def model_space(registry: Registry, adapter: ModelAdapter, steps: int, half_resolution: bool) -> ModelSpace:
    """The adapter's baseline at `steps` steps and its registered recipes; a model family with no baseline recipe
    is refused (tune compares everything with it)."""
    recommends = adapter if isinstance(adapter, RecommendsRecipes) else None
    if recommends is None:
        raise RaluError(
            f"the {adapter.name!r} adapter names no baseline recipe, so ralu tune has nothing to compare with; tune "
            "searches the DiT adapters' strategies (ralu plugins lists them)"
        )
    baseline = find_recipe(recommends.baseline_recipe, registry)
    pinned = fewer_steps(ModelSpace(adapter=adapter.name, baseline=baseline, default_steps=steps), steps)
    others = (find_recipe(name, registry) for name in sorted(registry.recipes) if name != recommends.baseline_recipe)
    builtins = tuple(recipe for recipe in others if recipe.model == adapter.name)
    return ModelSpace(
        adapter=adapter.name,
        baseline=attrs.evolve(pinned, name=recommends.baseline_recipe),
        default_steps=steps,
        half_resolution=half_resolution,
        builtins=builtins,
    )


def default_size(pipe: Any) -> tuple[int, int] | None:
    """The pipeline's default image size (diffusers' ``default_sample_size`` x ``vae_scale_factor``)."""
    sample, factor = getattr(pipe, "default_sample_size", None), getattr(pipe, "vae_scale_factor", None)
    if isinstance(sample, int) and isinstance(factor, int):
        return sample * factor, sample * factor
    return None


def check_speedups(speedups: Sequence[float]) -> tuple[float, ...]:
    chosen = tuple(float(s) for s in speedups)
    if not chosen:
        raise RaluError("give at least one speed-up to tune for (--speedup 3 5)")
    bad = [s for s in chosen if not (math.isfinite(s) and s > 1.0)]
    if bad:
        raise RaluError(f"--speedup: each speed-up is a FLOPs ratio above 1 (3 = a third of the FLOPs), got {bad[0]:g}")
    if len(set(chosen)) != len(chosen):
        raise RaluError("--speedup: a speed-up is given twice")
    return tuple(sorted(chosen))


def check_distinct_prompts(prompts: Sequence[str]) -> None:
    """A prompt given twice could be chosen on and reported on: refused."""
    first: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        if prompt in first:
            raise RaluError(
                f"prompt {index + 1} repeats prompt {first[prompt] + 1} ({prompt[:60]!r}); tune holds some prompts "
                "out to report on, so each must be given once"
            )
        first[prompt] = index


def call_fingerprint(pipe: Any, denoiser: Any, call_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What else makes two tunes different although their prompts and seeds agree: the pipeline's checkpoint,
    its denoiser's config and dtype, and the call's arguments (guidance, sequence length ...)."""
    config = dict(getattr(denoiser, "config", {}) or {})
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode("utf-8")).hexdigest()[:16]
    return {
        "checkpoint": str(getattr(pipe, "name_or_path", "") or ""),
        "denoiser": f"{type(denoiser).__name__} {digest}",
        "dtype": str(getattr(denoiser, "dtype", "")),
        "call": json.loads(json.dumps(dict(call_kwargs), sort_keys=True, default=repr)),
    }


def tune(
    pipe: Any,
    prompts: Sequence[str],
    *,
    speedups: Sequence[float],
    seeds: Sequence[int] = (0, 1, 2),
    metrics: Sequence[str] | None = None,
    out: str | Path | None = None,
    height: int | None = None,
    width: int | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    max_candidates: int = 36,
    max_minutes: float | None = None,
    model_name: str | None = None,
    progress: Progress | None = None,
    plugin_manager: pluggy.PluginManager | None = None,
    workers: Workers | None = None,
) -> TuneResult:
    """Search the registered strategies for the recipe that scores best against `pipe`'s own sampler at each of
    `speedups` (FLOPs ratios), choosing on some of `prompts` x `seeds` and reporting on the others. With `out`, the
    recipes, report, plot and JSON are written there, and a killed tune resumes from what it scored. Under a
    launch of several processes, each calls this with its share of the work given by `workers`; the first one
    writes the outputs."""
    workers = workers or OneProcess()
    registry = Registry.collect(plugin_manager if plugin_manager is not None else create_plugin_manager())
    adapter = registry.resolve_adapter(pipe)
    chosen_speedups = check_speedups(speedups)
    if len(set(seeds)) != len(seeds):
        raise RaluError(f"seeds must be distinct, got {list(seeds)}")
    split_samples(len(prompts), list(seeds))
    check_distinct_prompts(prompts)
    if max_candidates < 1:
        raise RaluError(f"max_candidates must be at least 1, got {max_candidates}")
    size = (height, width) if height and width else default_size(pipe)
    if size is None:
        raise RaluError("give height and width: this pipeline has no default size (the FLOPs depend on it)")
    kwargs = {**dict(call_kwargs or {}), "height": size[0], "width": size[1]}
    bound = adapter.bind(pipe, 0, (), {**kwargs, "prompt": prompts[0]})
    steps = bound.default_steps
    if steps is None:
        raise RaluError(f"the {adapter.name!r} adapter runs its pipeline's own loop; ralu tune needs a DiT adapter")
    profile = counting(adapter).pipeline_flops_profile(pipe, kwargs)
    grid = profile.grid(*size)
    model = model_space(registry, adapter, steps, grid.rows % 2 == 0 and grid.cols % 2 == 0)
    weighted, notes = choose_metrics(registry, metrics)
    settings = TuneSettings(
        model=model_name or type(pipe).__name__,
        prompts=tuple(prompts),
        seeds=tuple(int(s) for s in seeds),
        speedups=chosen_speedups,
        metrics=tuple(w.spec for w in weighted),
        height=size[0],
        width=size[1],
        steps=steps,
        max_candidates=max_candidates,
        fingerprint=call_fingerprint(pipe, bound.denoiser, kwargs),
    )
    counter = CostCounter(registry, adapter, profile, size[0], size[1], steps)
    journal: Journal = MemoryJournal()
    if out is not None:
        journal = FolderJournal(Path(out), settings.to_json(), rank=workers.index)
        opened = None
        if workers.index == 0:
            try:
                journal.open()
            except RaluError as exc:
                opened = str(exc)
        refused = [r for r in workers.exchange(opened) if r]  # every process stops where the first was refused
        if refused:
            raise RaluError(refused[0])
        if workers.index > 0:
            journal.join()
    try:
        scorer = Scorer(pipe, registry, prompts, kwargs, weighted, journal, model.baseline)
        searched = searched_strategies(registry)
        check_searchable(searched, adapter.name)
        result = run_search(settings, model, searched, counter, scorer, progress, max_minutes, workers=workers)
        result.notes[:0] = notes
        if out is not None and workers.index == 0:
            write_outputs(result, Path(out))
    finally:
        if isinstance(journal, FolderJournal):
            journal.close()
    return result
