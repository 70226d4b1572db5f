"""The ``ralu`` commands, imported by `ralu_core.cli` once the arguments parse.

Model libraries load only where a command loads a model: diffusers and transformers are imported by the
model sources, adapters and caches that need them, never by the registry of plugins itself, so ``recipes``,
``plugins`` and ``schedule`` answer in about the time it takes to import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ralu_core.accelerated import accelerate
from ralu_core.accounting import recipe_cost
from ralu_core.adapter import (
    EmbedsModels,
    FlopsProfile,
    ModelAdapter,
    adapter_problems,
    architectures,
    bind_to_adapter,
    counting,
    embedded_models,
)
from ralu_core.batch import (
    MANIFEST,
    OutputFolder,
    Processes,
    WorkItem,
    as_json,
    batches,
    launched_processes,
    launched_world_size,
    plan_items,
    read_prompts,
    shard,
)
from ralu_core.compiling import compile_denoiser
from ralu_core.diffusers_compat import dtype_argument
from ralu_core.errors import RaluError, RecipeError, did_you_mean
from ralu_core.model_sources import ModelSource, resolve_model_source
from ralu_core.ntdm import solve_ntdm
from ralu_core.outputs import check_writable, default_image_paths, image_format, numbered_paths, save_image_atomically
from ralu_core.paired import check_report, compare
from ralu_core.plugins import KIND_LABELS, Registry, create_plugin_manager, plugin_info
from ralu_core.preflight import (
    check_call_args,
    check_counts,
    check_device,
    check_prompt_lengths,
    check_seeds,
    check_sizes,
    parse_call_args,
)
from ralu_core.recipes import Recipe, RecipeRuntime, find_recipe, resolve_recipe
from ralu_core.schedule_report import published_for, recipe_schedule
from ralu_core.selection_view import SelectionRecorder, selection_figure

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EMBEDDED_SIZE = 256  # default image side for the embedded random-weight models (fast on a CPU)


def resolve_device(device: str | None) -> str:
    """--device as given, else cuda where available, else cpu."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def apply_threads(threads: int | None) -> None:
    """--threads, checked with the rest of the input (before any model loads)."""
    if threads is not None:
        if threads < 1:
            raise RaluError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def say_if_busy(threads: int | None, device: str) -> None:
    """Where no --threads was given and the CPU samples, a note when other work already keeps every core busy:
    PyTorch's one thread per core then waits on the others, and sampling slows many times over. Said once
    the input is known to be good, just before the model loads (a refusal is not the place for it)."""
    if threads is None and device == "cpu" and (note := busy_machine_note()):
        _say(f"note: {note}")


def busy_machine_note() -> str:
    """A note when the machine's load (the last minute's average of runnable processes) is at least its number
    of cores, else ""."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not every platform has it
        return ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load < cores:
        return ""
    return (
        f"this machine is busy (load {load:.1f} on {cores} cores) and PyTorch runs {torch.get_num_threads()} threads "
        "that wait on each other when a core is taken: sampling can be many times slower; --threads 1 often helps"
    )


def quiet_model_libraries() -> None:
    """diffusers' and transformers' loggers and loading bars, silenced where a command loads a model (their
    verbosity was set through the environment before they loaded; their loading bars have no such setting)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    diffusers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _registry() -> Registry:
    return Registry.collect(create_plugin_manager())


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# --- model resolution ---------------------------------------------------------------------------


def default_model(registry: Registry, recipe: Recipe) -> str:
    """The model used when no --model is given: a plugin's default named model for the recipe's adapter
    (a trained reference model), else the adapter's first random-weight embedded model."""
    adapters = [recipe.model] if recipe.model else sorted(registry.adapters)
    for adapter_name in adapters:
        for name, entry in sorted(registry.models.items()):
            if entry.obj.default and entry.obj.adapter == adapter_name:
                return name
    for adapter_name in adapters:
        adapter = registry.adapters.get(adapter_name)
        names = () if adapter is None else embedded_models(adapter.obj)
        if names:
            return names[0]
    raise RaluError("no embedded default model is installed for this recipe; pass --model PATH|HUB-ID")


def load_model(
    registry: Registry, model: str | None, recipe: Recipe, device: str, dtype: str
) -> tuple[Any, dict[str, Any]]:
    """The pipeline for --model (named or embedded model, local folder or hub id) and the call arguments
    it expects by default (size, sequence length...; empty for a folder or hub id)."""
    source = resolve_model_source(registry, default_model(registry, recipe) if model is None else model)
    return load_source(registry, source, device, dtype)


def load_source(
    registry: Registry,
    source: ModelSource,
    device: str,
    dtype: str,
    *,
    announce: bool = True,
    prompts: Sequence[str] = (),
) -> tuple[Any, dict[str, Any]]:
    """The pipeline of a resolved --model; `announce=False` keeps a named model's note to itself (every
    process but the main one of a launch, so that the note is said once); the note speaks of `prompts`."""
    quiet_model_libraries()
    if source.kind in ("named", "embedded"):
        return _build_offline(registry, source, device, dtype, announce=announce, prompts=prompts)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(source.name, **dtype_argument(DTYPES[dtype]))  # type: ignore[no-untyped-call]
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RaluError(f"--model {source.name}: cannot load it as a diffusers pipeline: {first}") from None
    return pipe.to(device), {}


def _build_offline(
    registry: Registry, source: ModelSource, device: str, dtype: str, *, announce: bool, prompts: Sequence[str]
) -> tuple[Any, dict[str, Any]]:
    """A named or embedded model, its note said, on `device` in `dtype`, and the call arguments it expects."""
    defaults = known_call_defaults(registry, source)
    if source.kind == "named":
        named = registry.models[source.name].obj
        note = " ".join(part for part in (named.note, named.prompt_note(prompts) if named.prompt_note else "") if part)
        build = partial(named.load, device, DTYPES[dtype]) if named.loads_on_device else named.load
    else:
        embeds = source.adapter if isinstance(source.adapter, EmbedsModels) else None
        assert embeds is not None
        note = embeds.embedded_note(source.name)
        build = partial(embeds.embedded_pipeline, source.name)
    if note and announce:
        _say(f"note: {note}")
    pipe = build()
    if hasattr(pipe, "to"):  # nothing moves for a model built in place
        pipe = pipe.to(device) if dtype == "float32" else pipe.to(device=device, dtype=DTYPES[dtype])
    return pipe, defaults


def known_call_defaults(registry: Registry, source: ModelSource) -> dict[str, Any]:
    """The call arguments a named or embedded model expects, known without loading it (none for a pipeline
    loaded from the hub or a folder: its own defaults apply)."""
    if source.kind == "named":
        return dict(registry.models[source.name].obj.call_defaults)
    if source.kind == "embedded":
        return {"height": EMBEDDED_SIZE, "width": EMBEDDED_SIZE}
    return {}


# --- commands -----------------------------------------------------------------------------------


def cmd_generate(ns: argparse.Namespace) -> int:
    ns.device = resolve_device(ns.device)
    apply_threads(ns.threads)
    registry = _registry()
    recipe = find_recipe(ns.recipe, registry)
    runtime = resolve_recipe(recipe, registry)
    # Everything that can be checked without the model is checked before it loads.
    source = resolve_model_source(registry, default_model(registry, recipe) if ns.model is None else ns.model)
    if recipe.model is not None and source.adapter is not None and source.adapter.name != recipe.model:
        raise RaluError(
            f"recipe {recipe.name} is for {recipe.model!r} pipelines and --model {source.name} is a "
            f"{source.adapter.name!r} pipeline; pick a recipe for it (`ralu recipes list`)"
        )
    check_counts(ns.steps, ns.num_images, ns.guidance)
    if ns.steps is not None and not runtime.schedule.accepts_requested_steps:
        fixed = [s.spec.steps for s in runtime.stages]
        raise RaluError(f"--steps: recipe {recipe.name} fixes its steps per stage {fixed}; drop --steps")
    call_args = parse_call_args(ns.call_arg)
    check_call_args(call_args, source.pipeline_class)
    check_sizes((("--height", ns.height), ("--width", ns.width)), source, recipe.start_level)
    for note in check_device(ns.device, ns.dtype):
        _say(f"note: {note}")
    if ns.prompts is not None:
        return _generate_many(ns, registry, recipe, source, call_args)
    if ns.prompt is None:
        raise RaluError("give a prompt, or --prompts FILE for many")
    check_seeds("--seed", [ns.seed + i for i in range(ns.num_images)])  # image i has seed --seed + i
    if (world := launched_world_size()) > 1:
        raise RaluError(
            f"one prompt was given to {world} launched processes (WORLD_SIZE={world}), which would all make the "
            "same image; run it as one process, or give --prompts FILE to split many images between them"
        )
    if ns.out is None:  # a fresh name per prompt, recipe and seed: an earlier image is never overwritten
        paths = default_image_paths(ns.prompt, recipe.name, ns.seed, ns.num_images)
    else:
        paths = numbered_paths(Path(ns.out), ns.num_images)
    for path in paths:
        check_writable(path)
        image_format(path)

    say_if_busy(ns.threads, ns.device)
    pipe, defaults = load_source(registry, source, ns.device, ns.dtype, prompts=[ns.prompt])
    recorder = SelectionRecorder()
    if ns.save_selection:
        registry.pm.register(recorder)
    fast = accelerate(pipe, recipe, plugin_manager=registry.pm)
    kwargs = _call_kwargs(ns, defaults, call_args)
    kwargs.update(num_images_per_prompt=ns.num_images)
    generators = [torch.Generator("cpu").manual_seed(ns.seed + i) for i in range(ns.num_images)]
    start = time.perf_counter()
    images = fast(ns.prompt, generator=generators, **kwargs).images
    elapsed = time.perf_counter() - start
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    replaced = [path for path in paths if path.exists()]
    written = []
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        targets = [(image, path)]
        if ns.save_selection:
            targets.append(
                (selection_figure(image, recorder.of_image(index)), path.with_name(f"{path.stem}-selection.png"))
            )
        for picture, target in targets:
            try:
                save_image_atomically(picture, target)
            except OSError as exc:  # a full disk ...: nothing half-written is left
                raise RaluError(f"--out {target}: cannot write it ({exc.strerror or exc})") from None
            written.append(target)
    if replaced:
        _say(f"note: replaced {', '.join(str(p) for p in replaced)} (--out names an existing file)")
    _say(f"recipe {recipe.name}: {len(images)} image(s) {images[0].size[0]}x{images[0].size[1]} in {elapsed:.2f} s")
    for path in written:
        print(path)
    return 0


def _call_kwargs(ns: argparse.Namespace, defaults: dict[str, Any], call_args: dict[str, Any]) -> dict[str, Any]:
    """The pipeline arguments of a generate call: the model's defaults, --call-arg, then the named options."""
    kwargs: dict[str, Any] = {**defaults, **call_args}
    kwargs.update(height=ns.height or kwargs.get("height"), width=ns.width or kwargs.get("width"))
    if ns.steps is not None:
        kwargs["num_inference_steps"] = ns.steps
    if ns.guidance is not None:
        kwargs["guidance_scale"] = ns.guidance
    return {k: v for k, v in kwargs.items() if v is not None}


def _generate_many(
    ns: argparse.Namespace, registry: Registry, recipe: Recipe, source: ModelSource, call_args: dict[str, Any]
) -> int:
    """``--prompts FILE --out DIR``: every (prompt, seed) not done yet, this process's share of them."""
    if ns.prompt is not None:
        raise RaluError("give either a prompt or --prompts FILE, not both")
    if ns.save_selection:
        raise RaluError("--save-selection is for one prompt; drop it with --prompts FILE")
    if ns.num_images != 1:
        raise RaluError("--num-images is for one prompt; with --prompts, give --seeds (one image per prompt and seed)")
    if ns.batch_size < 1:
        raise RaluError(f"--batch-size must be at least 1, got {ns.batch_size}")
    check_seeds("--seeds", ns.seeds)
    prompts = read_prompts(Path(ns.prompts))
    folder = OutputFolder(Path(ns.out or "ralu-images"))
    folder.prepare()
    kwargs = _call_kwargs(ns, known_call_defaults(registry, source), call_args)
    check_prompt_lengths(source, prompts, kwargs)
    items = plan_items(prompts, ns.seeds)
    made_with = {"recipe": recipe.name, "model": source.name, "settings": as_json({**kwargs, "dtype": ns.dtype})}
    processes = launched_processes()
    _own_folder(folder, processes)
    try:
        done = folder.finished(items, made_with)  # by every process, so that all refuse a mixed folder together
        share = shard(items, processes.index, processes.count)
        mine = [item for item in share if item not in done]  # no other process makes items of this share
        done_before = len(share) - len(mine)
        device = processes.device if processes.count > 1 and processes.device else ns.device  # one device each
        if mine:
            if processes.is_main:
                say_if_busy(ns.threads, device)
            pipe, _ = load_source(registry, source, device, ns.dtype, announce=processes.is_main, prompts=prompts)
            fast = accelerate(pipe, recipe, plugin_manager=registry.pm)
            _run_items(fast, mine, folder, kwargs, ns.batch_size, made_with, processes.index)
        processes.wait_for_everyone()
        made, before = processes.sum_over_processes((len(mine), done_before))
        if processes.is_main:
            try:
                merged = folder.merge_manifest(items)
            except OSError as exc:
                raise RaluError(
                    f"--out {folder.root}: cannot write {MANIFEST} ({exc.strerror or exc}); the images are kept: fix "
                    "this and run the same command again to write it"
                ) from None
            by = "this process" if processes.count == 1 else f"{processes.count} processes"
            _say(
                f"recipe {recipe.name}: {merged} of {len(items)} images in {folder.root} "
                f"({made} made by {by}, {before} already there); manifest {folder.root / MANIFEST}"
            )
    finally:
        folder.unlock()
        processes.close()
    return 0


def _own_folder(folder: OutputFolder, processes: Processes) -> None:
    """The main process of the run locks the folder for the run; if another run holds it, every process of
    this one stops (the answer is shared, so that none goes on alone)."""
    refused: RaluError | None = None
    if processes.is_main:
        try:
            folder.lock()
        except RaluError as exc:
            refused = exc
    (held_elsewhere,) = processes.sum_over_processes((int(refused is not None),))
    if held_elsewhere:
        raise refused or RaluError(f"--out {folder.root}: another ralu run is writing to this folder")


def _run_items(
    fast: Any,
    items: list[WorkItem],
    folder: OutputFolder,
    kwargs: dict[str, Any],
    size: int,
    made_with: dict[str, Any],
    rank: int,
) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(items), desc=f"images (process {rank})", unit="image", position=rank) as bar:
        for chunk in batches(items, size):
            generators = [torch.Generator("cpu").manual_seed(item.seed) for item in chunk]
            start = time.perf_counter()
            images = fast([item.prompt for item in chunk], generator=generators, **kwargs).images
            seconds = (time.perf_counter() - start) / len(chunk)
            for item, image in zip(chunk, images, strict=True):
                record = {
                    "prompt": item.prompt,
                    "prompt_index": item.index,
                    "seed": item.seed,
                    **made_with,
                    "seconds": round(seconds, 4),
                    "process": rank,
                }
                try:
                    folder.save(item, image, record)
                except OSError as exc:  # a full disk, a folder removed under the run ...
                    raise RaluError(
                        f"--out {folder.root}: cannot write {folder.image_path(item).name} ({exc.strerror or exc}); "
                        "every image written so far is kept: fix this and run the same command again to complete it"
                    ) from None
            bar.update(len(chunk))


def cmd_recipes(ns: argparse.Namespace) -> int:
    registry = _registry()
    if ns.action == "list":
        rows = [(name, find_recipe(name, registry), entry.plugin) for name, entry in sorted(registry.recipes.items())]
        width = max((len(name) for name, _, _ in rows), default=0)
        for name, recipe, plugin in rows:
            print(f"{name:<{width}}  {recipe.model or 'any':<6} {recipe.description}  [{plugin}]")
        return 0
    if ns.action == "show":
        if ns.target in registry.recipes:
            print(registry.recipes[ns.target].obj.read_text(encoding="utf-8"), end="")
            return 0
        find_recipe(ns.target, registry)  # raises with the list of built-ins
        print(Path(ns.target).read_text(encoding="utf-8"), end="")
        return 0
    runtime = resolve_recipe(find_recipe(ns.target, registry), registry)
    model = runtime.recipe.model
    if model is not None and model in registry.adapters:
        problems = adapter_problems(registry.adapters[model].obj, runtime)
        if problems:
            raise RecipeError(runtime.recipe.name, [f"on {model!r} pipelines: {p}" for p in problems])
    steps = [s.spec.steps for s in runtime.stages]
    print(f"ok: {runtime.recipe.name}: {len(steps)} stage(s), steps {steps}, schedule {runtime.schedule.name}")
    return 0


def cmd_plugins(ns: argparse.Namespace) -> int:
    registry = _registry()
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


def cmd_schedule(ns: argparse.Namespace) -> int:
    if ns.recipe is not None:
        return _schedule_of_recipe(ns)
    if not ns.steps or not ns.ends:
        raise RaluError("give a stage plan (--steps N ... --ends E ...) or a recipe (--recipe NAME)")
    base_shift = 3.0 if ns.base_shift is None else ns.base_shift
    data = solve_ntdm(ns.steps, ns.ends, base_shift).to_dict()
    published = published_for(_registry(), ns.steps, ns.ends, base_shift)
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
    registry = _registry()
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


def counted_runtime(registry: Registry, model: str, recipe: Recipe) -> tuple[RecipeRuntime, FlopsProfile]:
    """The recipe resolved and bound to the adapter of `model` (an architecture, a pipeline folder or a named
    model), as a
    call would be, and its counting profile; a recipe tuned for another model family is refused (as `generate`
    does)."""
    runtime = resolve_recipe(recipe, registry)
    named = registry.models.get(model)
    if named is not None:  # a model `generate` and `bench` take by name: count what it is made of
        source = named.obj.flops_source()
        if source is None:
            raise RaluError(
                f"model {model!r} stores no configuration to count; give its architecture or pipeline folder"
            )
        model = source
    adapter = _flops_adapter(registry, model)
    if recipe.model is not None and recipe.model != adapter.name:
        raise RaluError(
            f"recipe {recipe.name} is for {recipe.model!r} pipelines and {model} is a {adapter.name!r} "
            "architecture; pick a recipe for it (`ralu recipes list`)"
        )
    profile = counting(adapter).flops_profile(model)
    bind_to_adapter(adapter, runtime)
    return runtime, profile


def _flops_adapter(registry: Registry, model: str) -> ModelAdapter:
    for entry in registry.adapters.values():
        if model in architectures(entry.obj):
            return entry.obj  # type: ignore[no-any-return]
    index = Path(model) / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name")
        for entry in registry.adapters.values():
            if class_name in entry.obj.pipeline_classes:
                return entry.obj  # type: ignore[no-any-return]
        raise RaluError(f"no installed adapter handles {class_name} (from {index})")
    known = sorted(a for e in registry.adapters.values() for a in architectures(e.obj))
    raise RaluError(
        f"unknown model {model!r}{did_you_mean(model, known)}: give an architecture ({', '.join(known)}) "
        "or a pipeline folder"
    )


def cmd_flops(ns: argparse.Namespace) -> int:
    registry = _registry()
    recipe = find_recipe(ns.recipe, registry)
    runtime, profile = counted_runtime(registry, ns.model, recipe)
    cost = recipe_cost(runtime, profile, ns.height, ns.width, steps=ns.steps, baseline_steps=ns.baseline_steps)
    include = ns.attention == "include"
    report = cost.to_dict(include)
    if ns.json:
        print(json.dumps(report, indent=2))
        return 0
    label = "linear layers and attention" if include else "linear layers only, attention not counted"
    print(f"{recipe.name} on {profile.name} at {ns.height}x{ns.width} ({label}; text encoders excluded)")
    for k, stage in enumerate(report["stages"]):
        cached = {kind: n for kind, n in stage["step_kinds"].items() if kind != "full"}
        notes = [f"{n} {kind}" for kind, n in cached.items()]
        sparse = [n for n in stage["step_tokens"] if n < stage["image_tokens"]]
        if sparse:
            seen = "attending to all via cached keys/values" if stage["inactive"] == "kv-cache" else "others dropped"
            span = f"{min(sparse)}" if min(sparse) == max(sparse) else f"{min(sparse)} to {max(sparse)}"
            notes.append(f"{len(sparse)} sparse steps computing {span} tokens, {seen}")
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(
            f"  stage {k}: {stage['image_tokens']:>6} image tokens x {stage['steps']:>2} steps "
            f"= {stage['tflops']:9.2f} TFLOPs{note}"
        )
    print(f"  final VAE decode        = {report['final_decode_tflops']:9.2f} TFLOPs")
    if cost.adaptive_caches:
        print(
            f"  adaptive cache(s) {', '.join(cost.adaptive_caches)} counted as full: their savings depend on the run "
            "(ralu bench measures them)"
        )
    print(
        f"  total {report['tflops']:.2f} TFLOPs vs baseline ({cost.baseline_steps} steps) "
        f"{report['baseline_tflops']:.2f} TFLOPs: {report['speedup']:.2f}x"
    )
    other = report["conventions"]["with_attention" if not include else "linear_only"]
    print(f"  ({'with' if not include else 'without'} attention: {other['speedup']:.2f}x)")
    return 0


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


def cmd_bench(ns: argparse.Namespace) -> int:
    from ralu_core.bench import BenchPlan, run_bench, write_outputs

    ns.device = resolve_device(ns.device)
    apply_threads(ns.threads)
    registry = _registry()
    recipes = [find_recipe(name, registry) for name in ns.recipes]
    for recipe in recipes:
        resolve_recipe(recipe, registry)
    check_distinct_names(ns.recipes, recipes)
    prompts = _bench_prompts(registry, ns)
    if ns.warmup < 0:
        raise RaluError(f"--warmup must be 0 or more (untimed calls before timing), got {ns.warmup}")
    if ns.compile != "off" and ns.warmup < 1:
        raise RaluError("--compile needs --warmup 1 or more: the warm-up calls compile, the timed ones must not")
    check_seeds("--seeds", ns.seeds)
    model = default_model(registry, recipes[0]) if ns.model is None else ns.model
    source = resolve_model_source(registry, model)
    known_defaults = known_call_defaults(registry, source)
    height, width = ns.height or known_defaults.get("height"), ns.width or known_defaults.get("width")
    if height is None or width is None:
        raise RaluError("ralu bench needs --height and --width for a loaded model (the FLOPs depend on them)")
    prepare_report_folder(Path(ns.out))  # the last check: a refused command leaves no folder behind
    say_if_busy(ns.threads, ns.device)
    pipe, defaults = load_source(registry, source, ns.device, ns.dtype, prompts=prompts)
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
    device = _device_name(ns.device)
    plot_metric = next((m for m in ("shapeeval", "psnr") if m in registry.metrics), None)
    paths = write_outputs(result, Path(ns.out), device, plot_metric)
    print(Path(paths[1]).read_text(), end="")
    for path in paths:
        print(path)
    return 0


def _read_report(name: str) -> dict[str, Any]:
    path = Path(name)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RaluError(f"cannot read the bench report {path}: {exc}") from None
    except RecursionError:
        raise RaluError(f"cannot read the bench report {path}: it is nested too deeply to be one") from None
    return dict(check_report(report, str(path)))


def cmd_compare(ns: argparse.Namespace) -> int:
    report = _read_report(ns.report)
    other = None if ns.second_report is None else _read_report(ns.second_report)
    results = compare(report, ns.first, ns.second, ns.metric, second_report=other)
    if ns.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    pairs = max((r.pairs for r in results), default=0)
    where = "" if other is None else f" from {ns.second_report}"
    print(f"{ns.first} (A) against {ns.second}{where} (B), paired by (prompt, seed): {pairs} pairs")
    print(
        f"{'metric':<18} {'mean A':>8} {'mean B':>8} {'A higher':>9} {'B higher':>9} {'equal':>6} {'sign test p':>12}"
    )
    for r in results:
        print(
            f"{r.metric:<18} {r.first_mean:>8.3f} {r.second_mean:>8.3f} {r.first_higher:>9} {r.second_higher:>9} "
            f"{r.equal:>6} {r.p_value:>12.2g}"
        )
    return 0


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --- parser -------------------------------------------------------------------------------------
