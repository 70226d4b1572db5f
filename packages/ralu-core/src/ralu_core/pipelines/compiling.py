"""``torch.compile`` for accelerated pipelines: the denoiser's repeated blocks, one static graph per token count.

Why the blocks and not the whole model: a DiT is dozens of identical blocks, so compiling the block class
once (what diffusers calls regional compilation) takes seconds where the whole model takes minutes, and
every block of the class reuses the graph. Why ``dynamic=False``: RALU and RAS change the token count from
stage to stage, and a static graph per count gets the fastest kernels; it is reused by every step and every
later call of the same size. A run of several recipes meets a few counts each, so the recompile limit is
raised to keep any of them from falling back to eager. `graphs_compiled` lets a benchmark show that calls
after the first compile nothing.

Why each block's ``forward`` and not ``Module.compile``: block-level caches (ralu's and diffusers') are hooks
installed around a block's ``forward`` for one call and removed after it. Compiling the module's whole call
would trace those hooks too, guarding on the objects and Python state of the call that compiled them, so the
next call, with fresh hooks, would compile again. Compiling the block's own ``forward`` keeps the caches'
decisions in Python around the compiled computation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ralu_core.errors import RaluError
from ralu_core.pipelines.diffusers_private import repeated_block_names

if TYPE_CHECKING:
    import torch

__all__ = ["COMPILE_MODES", "compile_denoiser", "graphs_compiled", "repeated_blocks"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes (inductor's); ``default`` is ``mode=None``."""

RECOMPILE_LIMIT = 64
"""Graphs dynamo keeps per block class: shapes of a multi-recipe run, batch sizes and CFG layouts."""


def repeated_blocks(denoiser: Any) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks: the classes it declares in diffusers' ``_repeated_blocks`` where it
    does, else every module of its top-level ``ModuleList``\\ s (a DiT's ``transformer_blocks``)."""
    import torch

    names = repeated_block_names(denoiser)
    if names:
        return [m for m in denoiser.modules() if type(m).__name__ in names]
    return [block for child in denoiser.children() if isinstance(child, torch.nn.ModuleList) for block in child]


def compile_denoiser(denoiser: Any, mode: str = "default", backend: str = "inductor") -> int:
    """Compile the repeated blocks of a pipeline's denoiser (``pipe.transformer``) in place (each block's
    ``forward``, static shapes); returns how many. The pipeline keeps working as before, compiled on its first
    calls, and every accelerated view of it shares the compiled blocks."""
    if mode not in COMPILE_MODES:
        raise RaluError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)}")
    import torch

    blocks = repeated_blocks(denoiser)
    if not blocks:
        raise RaluError(f"{type(denoiser).__name__} has no repeated blocks to compile")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    options: dict[str, Any] = {"dynamic": False, "backend": backend}
    if backend == "inductor":
        options["mode"] = None if mode == "default" else mode
    for block in blocks:
        if not hasattr(block.forward, "_torchdynamo_orig_callable"):  # compiling twice changes nothing
            block.forward = torch.compile(block.forward, **options)
    return len(blocks)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (each new shape of a block is one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
