"""What the commands share: devices and threads, the registry, loading a model source, messages."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import torch

from ralu_core.cli.model_sources import ModelSource, resolve_model_source
from ralu_core.errors import RaluError
from ralu_core.pipelines.adapter import EmbedsModels, RecommendsRecipes, embedded_models
from ralu_core.pipelines.diffusers_compat import dtype_argument
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import Recipe
from ralu_core.sampling.contract import ModelAdapter

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
        say(f"note: {note}")


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


def installed_registry() -> Registry:
    return Registry.collect(create_plugin_manager())


def say(message: str) -> None:
    print(message, file=sys.stderr)


def default_adapter(registry: Registry, source: ModelSource | None = None) -> ModelAdapter:
    """The adapter whose recipes and architectures the CLI uses when a command names none: that of the model
    `source` where given and known before loading (a named or embedded model, a pipeline folder), else that of
    an installed plugin's default model (a trained reference model), else the first installed adapter (by name)
    that builds a model without weights and recommends recipes."""
    if source is not None:
        if isinstance(source.adapter, RecommendsRecipes):
            return source.adapter
        raise RaluError(f"no installed adapter recommends recipes for --model {source.name}; give --recipe")
    candidates = [registry.adapters.get(e.obj.adapter) for _, e in sorted(registry.models.items()) if e.obj.default]
    candidates += [entry for _, entry in sorted(registry.adapters.items()) if embedded_models(entry.obj)]
    for candidate in candidates:
        if candidate is not None and isinstance(candidate.obj, RecommendsRecipes):
            return cast(ModelAdapter, candidate.obj)
    raise RaluError("no installed adapter recommends a recipe; install one (ralu-flux, ralu-sd3, ...) or give --recipe")


def default_recipe(registry: Registry, source: ModelSource | None, baseline: bool = False) -> str:
    """The recipe a command runs when it names none: the default adapter's recommendation."""
    adapter = default_adapter(registry, source)
    assert isinstance(adapter, RecommendsRecipes)
    return adapter.baseline_recipe if baseline else adapter.default_recipe


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
        say(f"note: {note}")
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


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
