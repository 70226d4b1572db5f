"""The trained reference pipelines shipped inside ralu-bench, as named models of the ``ralu`` CLI.

``flux-shapes`` (a ``FluxPipeline``) and ``sd3-shapes`` (a ``StableDiffusion3Pipeline``) were trained on
the shapes data set by ``packages/ralu-bench/scripts/train_reference.py`` (exact commands and timings in
each folder's ``training.json``). They are ordinary diffusers folders: ``reference_model_path(name)``
gives the path for ``from_pretrained``. ``flux-shapes`` is the default model of ``ralu generate``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from ralu_bench.shapes import CAPTION_WORDS, COLOURS, KINDS
from ralu_core.pipelines.diffusers_compat import dtype_argument
from ralu_core.plugins.models import NamedModel

__all__ = [
    "REFERENCE_MODELS",
    "load_reference_pipeline",
    "recommended_call",
    "reference_model_path",
    "reference_models",
]

REFERENCE_MODELS: dict[str, str] = {"flux-shapes": "flux", "sd3-shapes": "sd3"}
"""Shipped model name -> the ralu adapter that drives it."""

_NOTE = "{name} is ralu-bench's small {arch} reference model, trained on procedural flat shapes at 128x128."

EXAMPLE = "a red circle at the top left and a blue square at the bottom right on a white background"

PLURALS = tuple(f"{kind}s" for kind in KINDS)
"""Plural kinds, which ShapeEval reads too (``two red circles``), though no training caption has them."""


def unknown_words(prompts: Sequence[str]) -> list[str]:
    """Words of `prompts` that no training caption holds, in order of first use (each once)."""
    known = {*CAPTION_WORDS, *PLURALS}
    seen: dict[str, None] = {}
    for prompt in prompts:
        for word in re.findall(r"[a-z]+", prompt.lower()):
            if word not in known:
                seen.setdefault(word)
    return list(seen)


def shapes_prompt_note(prompts: Sequence[str], limit: int = 8) -> str:
    """What a user should know about these prompts: nothing where every word is one the model was trained
    on; else which words it never saw (the image will not show them) and what it can draw."""
    unknown = unknown_words(prompts)
    if not unknown:
        return ""
    shown = ", ".join(repr(word) for word in unknown[:limit]) + (
        f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
    )
    return (
        f"It never saw the words {shown}, so the image will be meaningless: it draws one to three shapes named "
        f"by colour ({', '.join(COLOURS)}), kind ({', '.join(KINDS)}) and position, on a white, gray or black "
        f"background, e.g. '{EXAMPLE}'."
    )


def reference_model_path(name: str) -> Path:
    """The folder of a shipped reference pipeline (for ``FluxPipeline.from_pretrained`` and friends)."""
    if name not in REFERENCE_MODELS:
        raise KeyError(f"unknown reference model {name!r}; shipped: {', '.join(REFERENCE_MODELS)}")
    return Path(str(files("ralu_bench") / "weights" / name))


def recommended_call(name: str) -> dict[str, Any]:
    """The call arguments the model was trained for (size, T5 length, CFG), from its ``training.json``."""
    record = json.loads((reference_model_path(name) / "training.json").read_text(encoding="utf-8"))
    return dict(record["recommended_call"])


def load_reference_pipeline(name: str, dtype: torch.dtype = torch.float32) -> Any:
    """Load a shipped reference pipeline offline (a plain ``DiffusionPipeline.from_pretrained`` of its folder)."""
    from diffusers import DiffusionPipeline

    with loading_bars_hidden():  # Tiny models: diffusers' low-memory loading needs `accelerate`, warns without it.
        return DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            reference_model_path(name), **dtype_argument(dtype), low_cpu_mem_usage=False
        )


@contextmanager
def loading_bars_hidden() -> Iterator[None]:
    """diffusers' and transformers' loading bars hidden for the block, and left as they were after: for models
    that load in a fraction of a second, a bar is noise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    shown = [library.is_progress_bar_enabled() for library in libraries]  # type: ignore[no-untyped-call]
    for library in libraries:
        library.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        for library, was_shown in zip(libraries, shown, strict=True):
            if was_shown:
                library.enable_progress_bar()  # type: ignore[no-untyped-call]


def reference_models() -> list[NamedModel]:
    """The shipped reference models as named models; ``flux-shapes`` and ``sd3-shapes`` are the defaults of
    their adapters' recipes. Models whose folder is missing (a partial checkout) are left out."""
    models = []
    for name, adapter in REFERENCE_MODELS.items():
        if not (reference_model_path(name) / "model_index.json").is_file():
            continue
        call = recommended_call(name)
        call.pop("num_inference_steps", None)  # multi-stage recipes fix their own steps
        arch = {"flux": "FLUX-architecture", "sd3": "SD3-architecture"}[adapter]
        models.append(
            NamedModel(
                name=name,
                adapter=adapter,
                load=partial(load_reference_pipeline, name),
                note=_NOTE.format(name=name, arch=arch),
                prompt_note=shapes_prompt_note,
                call_defaults=call,
                folder=reference_model_path(name),
                default=True,
            )
        )
    return models
