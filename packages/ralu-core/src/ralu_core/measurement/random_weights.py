"""Full-size models with random weights, built on the device they will run on.

Why: a denoising step costs the same whatever its weights hold, so a published architecture built from
its config with random weights times exactly what a user of the real model waits for, with no download.
Building it in float32 on the CPU and then moving it would take minutes and hold twice the GPU copy
(FLUX.1-dev: 48 GB); here every tensor is created on the target device in the target dtype, after a
check, made on the meta device in milliseconds, that the weights fit. Prompts become random embeddings
of the text encoders' shapes (`random_text`), so no text encoder is built either.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ralu_core.errors import RaluError
from ralu_core.measurement.flops import meta_module

__all__ = ["check_fits", "free_memory", "random_module", "random_text", "weight_bytes"]

Part = tuple[Any, Mapping[str, Any]]
"""(a diffusers model class, its config)."""


def weight_bytes(parts: Sequence[Part], dtype: torch.dtype) -> int:
    """Bytes the parameters and buffers of these models take in `dtype` (counted on the meta device)."""
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for cls, config in parts:
        model = meta_module(cls, config)
        total += sum(t.numel() for t in (*model.parameters(), *model.buffers())) * size
    return total


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free on `device` now (a GPU: the driver's count; the CPU: MemAvailable); None: no limit known."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as info:
                for line in info:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(what: str, parts: Sequence[Part], device: torch.device | str, dtype: torch.dtype) -> None:
    """Refuse, before allocating anything, weights that do not fit in the device's free memory."""
    need = weight_bytes(parts, dtype)
    free = free_memory(device)
    if free is not None and need > free:
        dtype_name = str(dtype).removeprefix("torch.")
        raise RaluError(
            f"{what} needs {need / 2**30:.1f} GiB for its weights in {dtype_name} and {device} has "
            f"{free / 2**30:.1f} GiB free; run it on a GPU with enough memory (--device cuda --dtype bfloat16)"
        )


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Factory functions create tensors on `device` in `dtype` (the default dtype is restored on exit)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def random_module(
    cls: Any, config: Mapping[str, Any], device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> Any:
    """``cls.from_config(config)`` with the class's own random initialisation, drawn on `device` in `dtype`
    (the same seed gives the same weights on the same device), in eval mode without gradients. The
    caller's random state is left as it was."""
    device = torch.device(device)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked, device_type="cuda"), _building_on(device, dtype):
        torch.manual_seed(seed)
        model = cls.from_config(dict(config))
    # Buffers a class builds from numpy start on the CPU in float32. (nn.Module's own `to`: diffusers' override
    # warns about float32 modules even where a model has none.)
    model = torch.nn.Module.to(model, device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    return model


def random_text(
    prompts: Sequence[str], shape: Sequence[int], device: torch.device | str, dtype: torch.dtype, salt: str
) -> torch.Tensor:
    """(len(prompts), *shape) standard-normal embeddings, each a pure function of its prompt and `salt`
    (one salt per text encoder): a stand-in for a text encoder's output of that shape."""
    rows = []
    for prompt in prompts:
        generator = torch.Generator("cpu").manual_seed(zlib.crc32(f"{salt}\0{prompt}".encode()))
        rows.append(torch.randn(tuple(shape), generator=generator))
    return torch.stack(rows).to(device=device, dtype=dtype)
