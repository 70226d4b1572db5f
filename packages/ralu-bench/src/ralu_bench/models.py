"""The trained reference pipelines shipped inside ralu-bench, as named models of the ``ralu`` CLI.

``flux-shapes`` (a ``FluxPipeline``) and ``sd3-shapes`` (a ``StableDiffusion3Pipeline``) were trained on
the shapes data set by ``packages/ralu-bench/scripts/train_reference.py`` (exact commands and timings in
each folder's ``training.json``). They are ordinary diffusers folders: ``reference_model_path(name)``
gives the path for ``from_pretrained``. ``flux-shapes`` is the default model of ``ralu generate``.
"""

from __future__ import annotations

import json
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from ralu_core.models import NamedModel

__all__ = [
    "REFERENCE_MODELS",
    "load_reference_pipeline",
    "recommended_call",
    "reference_model_path",
    "reference_models",
]

REFERENCE_MODELS: dict[str, str] = {"flux-shapes": "flux", "sd3-shapes": "sd3"}
"""Shipped model name -> the ralu adapter that drives it."""

_NOTE = (
    "{name} is ralu-bench's {arch} reference model, trained on procedural flat shapes at 128x128: prompts "
    "name one to three shapes by colour, kind and position, e.g. 'a red circle at the top left and a blue "
    "square at the bottom right on a white background'. Other prompts give meaningless images."
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

    # Tiny models: diffusers' low-memory loading needs `accelerate` and only warns without it.
    return DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        reference_model_path(name), torch_dtype=dtype, low_cpu_mem_usage=False
    )


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
                call_defaults=call,
                folder=reference_model_path(name),
                default=True,
            )
        )
    return models
