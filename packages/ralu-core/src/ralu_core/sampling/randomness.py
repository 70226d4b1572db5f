"""Per-image random draws that follow diffusers' generator conventions.

A list of generators gives each image its own stream (so a batch equals the single calls made
with the same generators); one generator or None draws the whole batch at once, as diffusers'
``randn_tensor`` does. All of RALU's randomness (injected noise, random selection) goes through
here, from the call's generators, never the global RNG, so a seed reproduces an image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ralu_core.errors import CallError

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def per_image_generators(generator: GeneratorArg, batch_size: int) -> list[torch.Generator] | None:
    """Validate a generator argument; a list must have one generator per image."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != batch_size:
        raise CallError(
            f"got {len(generators)} generators for an effective batch of {batch_size} images; "
            "pass one generator per image (batch size x num_images_per_prompt) or a single generator"
        )
    return generators


def _cpu_or_same(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU draw moved to `device` without making the host wait: a copy from ordinary (pageable) host memory
    to a GPU waits for every kernel queued before it, a copy from pinned memory does not. The values are the
    same either way."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def randn(shape: Sequence[int], generator: GeneratorArg, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of `shape` (batch first), drawn like diffusers' randn_tensor."""
    shape = tuple(shape)
    generators = per_image_generators(generator, shape[0])
    if generators is None:
        gen = generator if isinstance(generator, torch.Generator) else None
        draw_device = _cpu_or_same(gen, device)
        return to_device(torch.randn(shape, generator=gen, device=draw_device, dtype=dtype), device)
    parts = [
        to_device(torch.randn((1, *shape[1:]), generator=g, device=_cpu_or_same(g, device), dtype=dtype), device)
        for g in generators
    ]
    return torch.cat(parts, dim=0)


def rand(
    shape: Sequence[int], generator: GeneratorArg, *, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform [0, 1) numbers of `shape` (batch first), per image like `randn`."""
    shape = tuple(shape)
    generators = per_image_generators(generator, shape[0])
    if generators is None:
        gen = generator if isinstance(generator, torch.Generator) else None
        return to_device(torch.rand(shape, generator=gen, device=_cpu_or_same(gen, device), dtype=dtype), device)
    parts = [
        to_device(torch.rand((1, *shape[1:]), generator=g, device=_cpu_or_same(g, device), dtype=dtype), device)
        for g in generators
    ]
    return torch.cat(parts, dim=0)


def generators_from_noise(noise: torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per image, seeded from a hash of that image's initial noise.

    For calls without a generator: the noise is then either the caller's `latents` (so the same
    latents give the same image, and a batch equals its single calls) or a draw from the global RNG
    (so ``torch.manual_seed`` still reproduces the whole call, as in diffusers).
    """
    generators = []
    for image in noise.detach():
        data = image.to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little") & (2**63 - 1)
        generators.append(torch.Generator().manual_seed(seed))
    return generators
