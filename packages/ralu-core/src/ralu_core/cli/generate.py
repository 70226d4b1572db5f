"""``ralu generate``: one prompt to image files, or many (``--prompts FILE --out DIR``), resumable."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ralu_core.cli import common
from ralu_core.cli.batch import (
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
from ralu_core.cli.model_sources import ModelSource, resolve_model_source
from ralu_core.cli.outputs import default_image_paths, numbered_paths
from ralu_core.cli.preflight import (
    check_call_args,
    check_counts,
    check_device,
    check_prompt_lengths,
    check_seeds,
    check_sizes,
    parse_call_args,
)
from ralu_core.errors import RaluError
from ralu_core.files import check_writable, image_format, save_image_atomically
from ralu_core.measurement.selection_view import SelectionRecorder, selection_figure
from ralu_core.pipelines.accelerated import accelerate
from ralu_core.plugins import Registry
from ralu_core.recipes import Recipe, find_recipe, resolve_recipe


def run(ns: argparse.Namespace) -> int:
    ns.device = resolve_device(ns.device)
    apply_threads(ns.threads)
    registry = installed_registry()
    # Everything that can be checked without the model is checked before it loads.
    given = None if ns.model is None else resolve_model_source(registry, ns.model)
    recipe = find_recipe(ns.recipe or default_recipe(registry, given), registry)
    runtime = resolve_recipe(recipe, registry)
    source = given or resolve_model_source(registry, default_model(registry, recipe))
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
        say(f"note: {note}")
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
    pipe, defaults = common.load_source(registry, source, ns.device, ns.dtype, prompts=[ns.prompt])
    recorder = SelectionRecorder()
    if ns.save_selection:
        registry.pm.register(recorder)
    fast = accelerate(pipe, recipe, plugin_manager=registry.pm)
    kwargs = _call_kwargs(ns, defaults, call_args)
    kwargs.update(num_images_per_prompt=ns.num_images)
    generators = [torch.Generator("cpu").manual_seed(ns.seed + i) for i in range(ns.num_images)]
    start = time.perf_counter()
    images = fast(prompt=ns.prompt, generator=generators, **kwargs).images
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
        say(f"note: replaced {', '.join(str(p) for p in replaced)} (--out names an existing file)")
    say(f"recipe {recipe.name}: {len(images)} image(s) {images[0].size[0]}x{images[0].size[1]} in {elapsed:.2f} s")
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
            pipe, _ = common.load_source(
                registry, source, device, ns.dtype, announce=processes.is_main, prompts=prompts
            )
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
            say(
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
            images = fast(prompt=[item.prompt for item in chunk], generator=generators, **kwargs).images
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
