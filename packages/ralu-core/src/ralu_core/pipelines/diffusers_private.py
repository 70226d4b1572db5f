"""Every private detail of diffusers that ralu relies on, each behind one name, and nowhere else.

diffusers keeps some of what a library around it needs out of its public API: where a module keeps its hook
registry and in which order its hooks run, the registry's cached list of hooked children, the description of
a block's outputs that its caches use, the original forward a hook wraps, a pipeline's execution device, a
model's repeated block classes, an attention processor's backend. ralu reads them only through this module,
and `tests/ralu_core/test_diffusers_private.py` checks each one against the installed diffusers by name, so
that a release which moves one fails that test rather than a user's call.

Supported diffusers: `SUPPORTED_DIFFUSERS`, the range every package declares (its tests ran on 0.42.1).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

__all__ = ["BaseState", "HookRegistry", "ModelHook", "StateManager"]  # and the functions below

SUPPORTED_DIFFUSERS = ">=0.42,<0.43"
"""The diffusers releases ralu is tested with; every ralu package requires this range."""


# --- hooks --------------------------------------------------------------------------------------------------

HOOK_TYPES = ("BaseState", "HookRegistry", "ModelHook", "StateManager")
"""diffusers' hook classes, from the module that defines them (``diffusers.hooks`` exports only two of them,
and only when torch is installed): importable from here, loaded with diffusers on first use, so that
importing ralu_core does not import diffusers."""


def __getattr__(name: str) -> Any:
    if name in HOOK_TYPES:
        from diffusers.hooks import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def hook_registry(module: Any) -> Any:
    """The diffusers hook registry `module` carries, or None (reading it never creates one)."""
    return getattr(module, "_diffusers_hook", None)


def drop_hook_registry(module: Any) -> None:
    """Remove the (empty) registry diffusers attached to `module`, leaving the module as it was: removing its
    last hook leaves the class's own ``forward`` set on the instance, which goes too."""
    del module._diffusers_hook
    forget_class_forward(module)


def forget_class_forward(module: Any) -> None:
    """Removing a module's last diffusers hook sets the class's own ``forward`` on the instance; remove that too
    (a ``forward`` of the user's, an offloading hook's say, is left alone)."""
    forward = vars(module).get("forward")
    if forward is not None and getattr(forward, "__func__", None) is type(module).forward:
        del module.forward


def hook_names(registry: Any) -> tuple[str, ...]:
    """The registry's hooks by name, in the order they were registered (the innermost first)."""
    return tuple(registry._hook_order)


def refresh_child_registries(registry: Any) -> None:
    """Rebuild the registry's cached list of hooked submodules (hooks added after it was built would otherwise
    miss their cache context)."""
    registry.invalidate_child_registries_cache()


def named_cache_context(module: Any, name: str, **fields: Any) -> AbstractContextManager[None]:
    """diffusers' named cache context (``CacheMixin.cache_context``) around one evaluation of `module`, with the
    step fields it carries; also on models without the mixin (SD3's transformer, whose hooks come from the
    ``apply_*`` functions)."""
    from diffusers.models.cache_utils import CacheMixin

    return CacheMixin.cache_context(module, name, **fields)  # type: ignore[no-any-return]


def original_forward(hook: Any) -> Callable[..., Any]:
    """The forward a registered diffusers `ModelHook` wraps (the module's own, or the next hook's)."""
    return hook.fn_ref.original_forward  # type: ignore[no-any-return]


# --- blocks ---------------------------------------------------------------------------------------------------


def block_outputs(block_class: type) -> Any:
    """diffusers' description of a transformer block class's arguments and outputs (which output is the image
    stream, which the text stream); ValueError for a class diffusers does not describe."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    return TransformerBlockRegistry.get(block_class)


def describe_block(block_class: type, *, image_index: int, text_index: int | None) -> None:
    """Tell diffusers' block registry which output of `block_class` is the image stream and which the text
    stream (None: the block returns no text), for a block class diffusers does not describe: an adapter's model
    knowledge, read by diffusers' caches and ralu's block-level caches alike. A described class is left alone."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    try:
        TransformerBlockRegistry.get(block_class)
    except ValueError:
        text: Any = text_index  # diffusers types it int and uses None for "no text" (its own attention blocks)
        metadata = TransformerBlockMetadata(
            return_hidden_states_index=image_index, return_encoder_hidden_states_index=text
        )
        TransformerBlockRegistry.register(block_class, metadata)


def block_argument(description: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Argument `name` of one call of a block described by `block_outputs`."""
    return description._get_parameter_from_args_kwargs(name, args, kwargs)


def output_indices(description: Any) -> tuple[int, int | None]:
    """(index of the image stream, index of the text stream or None) in a described block's output tuple."""
    return description.return_hidden_states_index, description.return_encoder_hidden_states_index


def repeated_block_names(denoiser: Any) -> set[str]:
    """The block classes a diffusers model declares as repeated (what regional compilation compiles)."""
    return set(getattr(denoiser, "_repeated_blocks", ()) or ())


# --- pipelines and attention ----------------------------------------------------------------------------------


def execution_device(pipe: Any) -> Any:
    """The device a diffusers pipeline runs its models on (offloading included)."""
    return pipe._execution_device


def attention_dispatch_options(processor: Any) -> dict[str, Any]:
    """The attention backend and parallel configuration a diffusers attention processor was set to."""
    return {
        "backend": getattr(processor, "_attention_backend", None),
        "parallel_config": getattr(processor, "_parallel_config", None),
    }
