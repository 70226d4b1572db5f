"""``ralu tune``: the fastest recipe that keeps quality on a model, its prompts and a FLOPs budget (see
`ralu_core.tuning`). What can be checked without the model (prompts, seeds, speed-ups, metrics, the output
folder) is checked before it loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ralu_core.cli import common
from ralu_core.cli.batch import Processes, launched_processes, read_prompts
from ralu_core.cli.common import (
    apply_threads,
    default_model,
    default_recipe,
    installed_registry,
    known_call_defaults,
    resolve_device,
    say,
    say_if_busy,
)
from ralu_core.cli.model_sources import resolve_model_source
from ralu_core.cli.preflight import check_prompt_lengths, check_seeds, parse_call_args
from ralu_core.errors import RaluError
from ralu_core.plugins import Registry
from ralu_core.recipes import find_recipe
from ralu_core.tuning import check_speedups, tune
from ralu_core.tuning.journal import precheck_folder
from ralu_core.tuning.report import summary_lines
from ralu_core.tuning.scoring import choose_metrics
from ralu_core.tuning.search import Progress, split_samples


def tune_prompts(registry: Registry, ns: argparse.Namespace) -> list[str]:
    given = [ns.prompts is not None, ns.prompt_set is not None, bool(ns.prompt)]
    if sum(given) != 1:
        raise RaluError("give the prompts one way: --prompt P (repeated), --prompts FILE, or --prompt-set NAME")
    if ns.prompts is not None:
        return read_prompts(Path(ns.prompts))
    if ns.prompt_set is not None:
        if ns.num_prompts < 1:
            raise RaluError(f"--num-prompts must be at least 1, got {ns.num_prompts}")
        entry = registry.prompt_sets.get(ns.prompt_set)
        if entry is None:
            known = ", ".join(sorted(registry.prompt_sets)) or "none installed"
            raise RaluError(f"unknown prompt set {ns.prompt_set!r}; installed: {known}")
        return list(entry.obj(ns.num_prompts))
    return list(ns.prompt)


class LaunchedWorkers:
    """The processes of ``accelerate launch`` / ``torchrun`` as a tune's workers."""

    def __init__(self, processes: Processes) -> None:
        self.index, self.count = processes.index, processes.count

    def exchange(self, mine: Any) -> list[Any]:
        if self.count == 1:
            return [mine]
        from accelerate.utils import gather_object

        return list(gather_object([mine]))


class TqdmProgress(Progress):
    """A progress bar of images scored (read back from an earlier run or made), with tqdm's ETA, and where the
    search is (the speed-up, the round and its candidates)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc="ralu tune", unit="image", dynamic_ncols=True)

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def describe(self, stage: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(stage)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run(ns: argparse.Namespace) -> int:
    ns.device = resolve_device(ns.device)
    apply_threads(ns.threads)
    registry = installed_registry()
    prompts = tune_prompts(registry, ns)
    check_seeds("--seeds", ns.seeds)
    split_samples(len(prompts), ns.seeds)
    speedups = check_speedups(ns.speedup)
    if ns.max_candidates < 1:
        raise RaluError(f"--max-candidates must be at least 1, got {ns.max_candidates}")
    if ns.max_minutes is not None and not ns.max_minutes > 0:
        raise RaluError(f"--max-minutes must be above 0, got {ns.max_minutes}")
    choose_metrics(registry, ns.metric)
    given = None if ns.model is None else resolve_model_source(registry, ns.model)
    model = ns.model or default_model(registry, find_recipe(default_recipe(registry, given), registry))
    source = given or resolve_model_source(registry, model)
    known = known_call_defaults(registry, source)
    height, width = ns.height or known.get("height"), ns.width or known.get("width")
    call_args = parse_call_args(ns.call_arg)
    check_prompt_lengths(source, prompts, {**known, **call_args})
    out = Path(ns.out)
    precheck_folder(out, {"model": model, "prompts": prompts, "seeds": list(ns.seeds), "speedups": list(speedups)})
    processes = launched_processes()
    try:
        if processes.is_main:
            say_if_busy(ns.threads, ns.device)
        device = processes.device if processes.count > 1 and processes.device else ns.device  # one device each
        pipe, defaults = common.load_source(
            registry, source, device, ns.dtype, announce=processes.is_main, prompts=prompts
        )
        pipe.set_progress_bar_config(disable=True)
        call = {**defaults, **call_args}
        call.pop("height", None), call.pop("width", None), call.pop("num_inference_steps", None)
        result = tune(
            pipe,
            prompts,
            speedups=speedups,
            seeds=ns.seeds,
            metrics=ns.metric or None,
            out=out,
            height=height,
            width=width,
            call_kwargs=call,
            max_candidates=ns.max_candidates,
            max_minutes=ns.max_minutes,
            model_name=model,
            progress=TqdmProgress() if processes.is_main else None,
            plugin_manager=registry.pm,
            workers=LaunchedWorkers(processes),
        )
    finally:
        processes.close()
    if not processes.is_main:
        return 0
    for line in summary_lines(result):
        print(line)
    for name in sorted(p.name for p in out.iterdir() if p.suffix in (".yaml", ".md", ".png", ".json")):
        print(out / name)
    say(f'use a tuned recipe: ralu generate --model {model} --recipe {out / "tuned-<N>x.yaml"} "a prompt"')
    return 0
