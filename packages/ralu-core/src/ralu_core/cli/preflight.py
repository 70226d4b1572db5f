"""Checks of a CLI call that need no model: run before anything is loaded or generated.

Loading a real pipeline takes seconds to minutes and generating longer; a typo in a flag should cost
neither. Each check raises a RaluError of one or two lines that says what is wrong and how to fix it.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import yaml

from ralu_core.cli.model_sources import ModelSource
from ralu_core.errors import RaluError, did_you_mean
from ralu_core.pipelines.adapter import ChecksBeforeLoading, check_image_size, image_side

SET_BY_THE_CLI = {
    "prompt": "the positional PROMPT",
    "generator": "--seed",
    "num_images_per_prompt": "--num-images",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "height": "--height",
    "width": "--width",
}


def parse_call_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each VALUE read as a YAML scalar (``128`` -> int, ``true`` -> bool)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise RaluError(f"--call-arg expects KEY=VALUE with a Python name as KEY, got {pair!r}")
        if key in SET_BY_THE_CLI:
            raise RaluError(f"--call-arg {key}: set it with {SET_BY_THE_CLI[key]} instead")
        try:
            args[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise RaluError(f"--call-arg {key}: cannot read the value {value!r}; quote it") from None
    return args


def pipeline_parameters(class_name: str | None) -> list[str] | None:
    """Keyword arguments the diffusers pipeline class's ``__call__`` accepts; None if the class is unknown."""
    if class_name is None:
        return None
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if not isinstance(cls, type):
        return None
    params = inspect.signature(cls.__call__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self"]


def check_call_args(args: dict[str, Any], class_name: str | None) -> None:
    """Unknown argument names (with a suggestion), and outputs the CLI cannot save."""
    known = pipeline_parameters(class_name)
    if known is not None:
        unknown = [k for k in args if k not in known]
        if unknown:
            hints = "; ".join(f"{k!r}{did_you_mean(k, known)}" for k in unknown)
            raise RaluError(f"--call-arg: {class_name} takes no argument {hints}")
    if args.get("output_type", "pil") != "pil":
        raise RaluError(
            f"--call-arg output_type={args['output_type']}: `ralu generate` writes image files, so it needs "
            "output_type=pil; for latents or arrays call the pipeline from Python"
        )
    if args.get("return_dict", True) is not True:
        raise RaluError("--call-arg return_dict: `ralu generate` needs the pipeline's output object; drop it")


def check_counts(steps: int | None, num_images: int, guidance: float | None) -> None:
    if steps is not None and steps < 1:
        raise RaluError(f"--steps must be at least 1, got {steps}")
    if num_images < 1:
        raise RaluError(f"--num-images must be at least 1, got {num_images}")
    if guidance is not None and not math.isfinite(guidance):
        raise RaluError(f"--guidance must be a finite number, got {guidance}")


SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64); a negative one wraps around to another's


def check_seeds(label: str, seeds: Sequence[int]) -> None:
    """Every seed a distinct generator seed: a repeated one would make the same image twice."""
    for seed in seeds:
        if not 0 <= seed < SEED_LIMIT:
            raise RaluError(f"{label}: {seed} is not a seed; give whole numbers from 0 to 2**64 - 1")
    repeated = sorted(seed for seed, times in Counter(seeds).items() if times > 1)
    if repeated:
        raise RaluError(f"{label}: {', '.join(map(str, repeated))} given more than once; give each seed once")


def check_sizes(sides: Iterable[tuple[str, Any]], source: ModelSource, coarsest_level: int) -> None:
    """Each given side is a whole number of pixels in a sane range and fits the model's multiple when the
    stored configs tell it."""
    try:
        values = {label: image_side(label, value) for label, value in sides if value is not None}
        rule = source.size_rule(coarsest_level)
        if rule is not None and values:
            multiple, why = rule
            check_image_size(values.get("--height", multiple), values.get("--width", multiple), multiple, why)
    except ValueError as exc:
        raise RaluError(str(exc)) from None


def check_device(device: str, dtype: str) -> list[str]:
    """Refuse a device this machine lacks; return notes worth one line each (e.g. float16 on a CPU)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise RaluError(f"--device {device!r} is not a device name; use cpu, cuda, cuda:1 or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise RaluError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise RaluError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise RaluError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    if parsed.type == "cpu" and dtype in ("float16", "bfloat16"):
        return [f"{dtype} on the CPU is slow and some operations lack it; float32 is the CPU's fast type"]
    return []


def check_prompt_lengths(source: ModelSource, prompts: Sequence[str], call_kwargs: Mapping[str, Any]) -> None:
    """Refuse prompts longer than the model's main text encoder reads for this call (the rest would be cut
    off with only a warning), with its stored tokenizer alone, before any model loads. Skipped where the
    adapter or the tokenizer is not known before loading."""
    checks = source.adapter if isinstance(source.adapter, ChecksBeforeLoading) else None
    limit = None if checks is None else checks.prompt_token_limit(call_kwargs)
    if limit is None:
        return
    component, most = limit
    tokenizer = source.tokenizer(component)
    if tokenizer is None:
        return
    too_long = [(i, n) for i, n in enumerate(len(ids) for ids in tokenizer(list(prompts)).input_ids) if n > most]
    if too_long:
        shown = ", ".join(f"prompt {i + 1} ({n} tokens)" for i, n in too_long[:3])
        more = f" and {len(too_long) - 3} more" if len(too_long) > 3 else ""
        raise RaluError(
            f"--prompts: {len(too_long)} prompt(s) longer than the {most} tokens its text encoder reads "
            f"({component}, max_sequence_length): {shown}{more}; shorten them, or raise the limit with "
            "--call-arg max_sequence_length=N"
        )
