"""``ralu bench``: recipes side by side on a prompt set: speed, FLOPs and quality, in a report folder."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ralu_core.cli import common
from ralu_core.cli.common import (
    apply_threads,
    default_model,
    default_recipe,
    device_name,
    installed_registry,
    known_call_defaults,
    resolve_device,
    say_if_busy,
)
from ralu_core.cli.model_sources import resolve_model_source
from ralu_core.cli.preflight import (
    check_seeds,
    parse_call_args,
)
from ralu_core.errors import RaluError
from ralu_core.measurement.profile import counting
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.pipelines.compiling import compile_denoiser
from ralu_core.plugins import Registry
from ralu_core.recipes import Recipe, find_recipe, resolve_recipe


def prepare_report_folder(out: Path) -> None:
    """The folder `ralu bench` writes its report into, made (or refused) before any model loads: found only
    after the run, a file in its place lost every measurement."""
    if out.exists() and not out.is_dir():
        raise RaluError(f"--out {out}: is a file; ralu bench writes a folder (report.json, report.md, grid.png ...)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RaluError(f"--out {out}: cannot make this folder ({exc.strerror or exc})") from None


def _bench_prompts(registry: Registry, ns: argparse.Namespace) -> list[str]:
    if ns.num_prompts < 1:
        raise RaluError(f"--num-prompts must be at least 1, got {ns.num_prompts}")
    if ns.prompt_set is not None:
        entry = registry.prompt_sets.get(ns.prompt_set)
        if entry is None:
            known = ", ".join(sorted(registry.prompt_sets)) or "none installed"
            raise RaluError(f"unknown prompt set {ns.prompt_set!r}; installed: {known}")
        return list(entry.obj(ns.num_prompts))
    return list(ns.prompt or ["a red circle and a blue square on a white background"])


def check_distinct_names(given: Sequence[str], recipes: Sequence[Recipe]) -> None:
    """A bench report keys every row, sample and score by recipe name: two recipes of one name (two YAML files
    that both say `name: x`, or one recipe given twice) would be merged into one row."""
    seen: dict[str, str] = {}
    for argument, recipe in zip(given, recipes, strict=True):
        if recipe.name in seen:
            raise RaluError(
                f"--recipes: {seen[recipe.name]} and {argument} are both named {recipe.name!r}, and a report keeps "
                "one row per name; give each recipe its own `name:`"
            )
        seen[recipe.name] = argument


class TqdmBenchProgress:
    """Two progress bars: the warm-up calls, then the timed samples (so neither hides in the other)."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def _update(self, phase: str, label: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if phase not in self.bars:
            for bar in self.bars.values():
                bar.close()
            self.bars[phase] = tqdm(total=total, desc=label)
        bar = self.bars[phase]
        bar.update(done - bar.n)

    def warmup(self, done: int, total: int) -> None:
        self._update("warmup", "bench warm-up (untimed)", done, total)

    def sample(self, done: int, total: int) -> None:
        self._update("sample", "bench (interleaved, timed)", done, total)

    def __enter__(self) -> TqdmBenchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()


def run(ns: argparse.Namespace) -> int:
    from ralu_core.measurement.bench import BenchPlan, run_bench, write_outputs

    ns.device = resolve_device(ns.device)
    apply_threads(ns.threads)
    registry = installed_registry()
    given = None if ns.model is None else resolve_model_source(registry, ns.model)
    names = ns.recipes or [default_recipe(registry, given, baseline=True), default_recipe(registry, given)]
    recipes = [find_recipe(name, registry) for name in names]
    for recipe in recipes:
        resolve_recipe(recipe, registry)
    check_distinct_names(names, recipes)
    prompts = _bench_prompts(registry, ns)
    if ns.warmup < 0:
        raise RaluError(f"--warmup must be 0 or more (untimed calls before timing), got {ns.warmup}")
    if ns.compile != "off" and ns.warmup < 1:
        raise RaluError("--compile needs --warmup 1 or more: the warm-up calls compile, the timed ones must not")
    check_seeds("--seeds", ns.seeds)
    model = default_model(registry, recipes[0]) if ns.model is None else ns.model
    source = given or resolve_model_source(registry, model)
    known_defaults = known_call_defaults(registry, source)
    height, width = ns.height or known_defaults.get("height"), ns.width or known_defaults.get("width")
    if height is None or width is None:
        raise RaluError("ralu bench needs --height and --width for a loaded model (the FLOPs depend on them)")
    prepare_report_folder(Path(ns.out))  # the last check: a refused command leaves no folder behind
    say_if_busy(ns.threads, ns.device)
    pipe, defaults = common.load_source(registry, source, ns.device, ns.dtype, prompts=prompts)
    pipe.set_progress_bar_config(disable=True)
    adapter = registry.resolve_adapter(pipe)
    fast = [accelerate(pipe, r, plugin_manager=registry.pm) for r in recipes]
    kwargs: dict[str, Any] = {**defaults, **parse_call_args(ns.call_arg), "height": height, "width": width}
    if ns.compile != "off":
        denoiser = adapter.bind(pipe, 0, (), {**kwargs, "prompt": prompts[0]}).denoiser  # what the caches hook
        compile_denoiser(denoiser, ns.compile, ns.compile_backend)
    plan = BenchPlan(
        recipes=fast,
        prompts=prompts,
        seeds=ns.seeds,
        call_kwargs=kwargs,
        steps=ns.steps,
        warmup=ns.warmup,
        decode=ns.decode,
        compiled=ns.compile != "off",
        host_syncs=ns.host_syncs,
    )
    metrics = [entry.obj for entry in registry.metrics.values()]
    profile = counting(adapter).pipeline_flops_profile(pipe, kwargs)
    with TqdmBenchProgress() as progress:
        result = run_bench(plan, metrics, profile, progress=progress)
    result.settings["model"] = model if ns.model else f"{model} (default)"
    result.settings["compile"] = "off" if ns.compile == "off" else f"mode {ns.compile}, backend {ns.compile_backend}"
    device = device_name(ns.device)
    plot_metric = next((m for m in ("shapeeval", "psnr") if m in registry.metrics), None)
    paths = write_outputs(result, Path(ns.out), device, plot_metric)
    print(Path(paths[1]).read_text(), end="")
    for path in paths:
        print(path)
    return 0
