"""A diffusers hook that audits cache contexts, for tests of adapters and caches.

It behaves like a stateful cache hook (diffusers sets its context, resets its state), but instead of
caching it checks what a cache hook relies on: that it runs inside a named context, and that within one
context, until the next reset, it only ever sees one token count and one text conditioning. A shared
context between CFG branches or image groups, or a token set change without a reset, fails loudly.
"""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.pipelines.diffusers_private import (
    BaseState,
    HookRegistry,
    ModelHook,
    StateManager,
    hook_names,
    hook_registry,
)

AUDIT_HOOK = "ralu_context_audit"


class _AuditState(BaseState):
    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None
        self.conditioning: float | None = None

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.shape = None
        self.conditioning = None


class ContextAudit(ModelHook):
    """Install on a transformer block with `install_audit`; `log` lists (context, step, batch, tokens)."""

    _is_stateful = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.state_manager = StateManager(_AuditState)  # type: ignore[arg-type]
        self.log: list[tuple[str, int | None, int, int]] = []
        self.resets = 0

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        context = self.state_manager.context  # raises, as a cache hook would, outside a context
        state = self.state_manager.get_state()  # type: ignore[no-untyped-call]
        shape = (int(hidden.shape[0]), int(hidden.shape[1]))
        conditioning = float(text.double().sum())
        if state.shape is not None and state.shape != shape:
            raise AssertionError(
                f"cache context {context.name!r} saw {state.shape} (batch, tokens) and then {shape} without a reset"
            )
        if state.conditioning is not None and not torch.isclose(
            torch.tensor(state.conditioning), torch.tensor(conditioning), rtol=1e-6
        ):
            raise AssertionError(f"cache context {context.name!r} saw two different text conditionings")
        state.shape, state.conditioning = shape, conditioning
        self.log.append((context.name, context.step_index, *shape))
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self.resets += 1
        return module


def install_audit(block: torch.nn.Module) -> ContextAudit:
    audit = ContextAudit()
    HookRegistry.check_if_exists_or_initialize(block).register_hook(audit, AUDIT_HOOK)
    return audit


def remove_audit(block: torch.nn.Module) -> None:
    registry = hook_registry(block)
    if registry is not None and registry.get_hook(AUDIT_HOOK) is not None:
        registry.remove_hook(AUDIT_HOOK, recurse=False)


def hook_snapshot(module: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """Submodule name -> the names of the diffusers hooks on it, in order (to check nothing was left)."""
    return {
        name: hook_names(registry)
        for name, sub in module.named_modules()
        if (registry := hook_registry(sub)) is not None and hook_names(registry)
    }
