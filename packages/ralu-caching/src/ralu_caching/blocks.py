"""What block-level caches need of a diffusers transformer: its blocks in order, which output of a
block is the image stream, and hooks installed for one call and removed afterwards.

Blocks are found the way diffusers' own caches find them (the ``ModuleList`` children named
``transformer_blocks``, ``single_transformer_blocks``, ``blocks`` or ``layers``, in definition order)
and read through diffusers' block metadata, so any model whose blocks diffusers' caches support works
without model-specific code here. Hooks are diffusers ``ModelHook``s: the engine's cache lifecycle
(named contexts per CFG branch and image group, a reset at every change of the token set) reaches
them exactly as it reaches a user's own diffusers caches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ralu_core.pipelines.diffusers_private import (
    block_argument,
    block_outputs,
    drop_hook_registry,
    forget_class_forward,
    hook_names,
    hook_registry,
    output_indices,
    refresh_child_registries,
)

if TYPE_CHECKING:
    from ralu_core.pipelines.diffusers_private import ModelHook

BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")


def standard_blocks(denoiser: Any, *, at_least: int = 3) -> list[torch.nn.Module]:
    """The denoiser's transformer blocks in execution order; refused if it has too few or unknown ones."""
    if not isinstance(denoiser, torch.nn.Module):
        raise ValueError(f"needs a diffusers transformer to hook into, got {type(denoiser).__name__}")
    blocks: list[torch.nn.Module] = []
    for name, child in denoiser.named_children():
        if name in BLOCK_LISTS and isinstance(child, torch.nn.ModuleList):
            blocks.extend(child)
    if len(blocks) < at_least:
        raise ValueError(
            f"{type(denoiser).__name__} has {len(blocks)} standard transformer blocks ({', '.join(BLOCK_LISTS)}); "
            f"this cache needs at least {at_least}"
        )
    for block in blocks:
        block_metadata(block)
    return blocks


def block_metadata(block: torch.nn.Module) -> Any:
    """diffusers' description of a block's signature and outputs (which output is the image stream)."""
    from diffusers.utils.torch_utils import unwrap_module

    try:
        return block_outputs(unwrap_module(block).__class__)
    except ValueError:
        raise ValueError(
            f"diffusers does not describe the outputs of {type(block).__name__} blocks (TransformerBlockRegistry), "
            "so block-level caches cannot tell its image stream from its text stream"
        ) from None


class BlockIO:
    """Reads and writes the (image, text) streams of one block type's inputs and outputs."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.metadata = block_metadata(block)
        self.image_index, self.text_index = output_indices(self.metadata)

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = block_argument(self.metadata, "hidden_states", args, kwargs)
        text = None
        if self.text_index is not None:
            text = block_argument(self.metadata, "encoder_hidden_states", args, kwargs)
        return hidden, text

    def outputs(self, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(output, tuple):
            return output, None
        return output[self.image_index], None if self.text_index is None else output[self.text_index]

    def pack(self, hidden: torch.Tensor, text: torch.Tensor | None) -> Any:
        """A block output holding these streams (what the block itself would have returned)."""
        if self.text_index is None:
            return hidden
        packed: list[Any] = [None, None]
        packed[self.image_index] = hidden
        packed[self.text_index] = text
        return tuple(packed)


def check_span(first: torch.nn.Module, last: torch.nn.Module, cache: str) -> None:
    """A cache that carries a residual from `first`'s input to `last`'s output needs both to carry their streams
    alike. FLUX.2's single-stream blocks return the text and image tokens as one sequence, its double-stream blocks
    the image stream alone (with the text apart)."""
    if (BlockIO(first).text_index is None) != (BlockIO(last).text_index is None):
        raise ValueError(
            f"{cache} carries a residual from a {type(first).__name__}'s input to a {type(last).__name__}'s output, "
            "and the two return their streams differently (one gives the text and image tokens as one sequence); "
            "choose blocks of one kind (on FLUX.2: a head covering the double-stream blocks, e.g. `head: 8`)"
        )


def plus(base: torch.Tensor | None, residual: torch.Tensor | None) -> torch.Tensor | None:
    return None if base is None or residual is None else base + residual


def minus(value: torch.Tensor | None, base: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None or base is None else value - base


@contextmanager
def hooks_installed(
    denoiser: torch.nn.Module, placements: Sequence[tuple[torch.nn.Module, ModelHook, str]]
) -> Iterator[None]:
    """Register each (module, hook, name) for the duration of the block, then remove them newest first
    (the only order diffusers removes cleanly) and drop the registries created for them, so the model is
    left exactly as it was, even after an error."""
    from ralu_core.pipelines.diffusers_private import HookRegistry

    hooked = {id(m): m for m in (denoiser, *(p[0] for p in placements))}.values()
    created = [m for m in hooked if not _has_registry(m)]
    plain = [m for m in hooked if "forward" not in vars(m)]
    done: list[tuple[torch.nn.Module, str]] = []
    try:
        for module, hook, name in placements:
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
            done.append((module, name))
        _refresh(denoiser)
        yield
    finally:
        for module, name in reversed(done):
            registry_of(module).remove_hook(name, recurse=False)
        for module in created:
            registry = hook_registry(module)
            if registry is not None and not registry.hooks:
                drop_hook_registry(module)
        for module in plain:
            registry = hook_registry(module)
            if registry is None or not registry.hooks:
                forget_class_forward(module)
        _refresh(denoiser)


@contextmanager
def hooks_added(denoiser: torch.nn.Module) -> Iterator[None]:
    """Whatever hooks are registered under `denoiser` inside the block (by diffusers' ``apply_*`` functions)
    are removed on exit, newest first, and registries created for them dropped; hooks that were there
    before (the user's own) stay as they were."""
    before = {id(m): set(registry_of(m).hooks) for m in denoiser.modules() if _has_registry(m)}
    plain = {id(m) for m in denoiser.modules() if "forward" not in vars(m)}
    try:
        yield
    finally:
        for module in denoiser.modules():
            registry = hook_registry(module)
            if registry is None:
                continue
            kept = before.get(id(module))
            for name in reversed(hook_names(registry)):
                if kept is None or name not in kept:
                    registry.remove_hook(name, recurse=False)
            if kept is None and not registry.hooks:
                drop_hook_registry(module)
            elif id(module) in plain and not registry.hooks:
                forget_class_forward(module)
        _refresh(denoiser)


def registry_of(module: torch.nn.Module) -> Any:
    """The diffusers hook registry a module carries (diffusers stores it as an attribute)."""
    return hook_registry(module)


def _has_registry(module: torch.nn.Module) -> bool:
    return hook_registry(module) is not None


def _refresh(denoiser: torch.nn.Module) -> None:
    registry = hook_registry(denoiser)
    if registry is not None:
        refresh_child_registries(registry)
