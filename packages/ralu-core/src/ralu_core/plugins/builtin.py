"""ralu-core's own strategies, registered through the ``ralu`` entry point like any plugin."""

from __future__ import annotations

from ralu_core.plugins.hookspecs import RegisterCache, RegisterSchedule, RegisterSelector, RegisterTransition, hookimpl
from ralu_core.strategies.base import TokenSelector
from ralu_core.strategies.caches import BUILTIN_CACHES
from ralu_core.strategies.ras_focus import RASFocusSelector
from ralu_core.strategies.schedules import BUILTIN_SCHEDULES
from ralu_core.strategies.selectors import BUILTIN_SELECTORS
from ralu_core.strategies.transitions import BUILTIN_TRANSITIONS


@hookimpl
def ralu_register_token_selectors(register: RegisterSelector) -> None:
    selectors: tuple[type[TokenSelector], ...] = (*BUILTIN_SELECTORS, RASFocusSelector)
    for cls in selectors:
        register(cls)


@hookimpl
def ralu_register_transitions(register: RegisterTransition) -> None:
    for cls in BUILTIN_TRANSITIONS:
        register(cls)


@hookimpl
def ralu_register_schedules(register: RegisterSchedule) -> None:
    for cls in BUILTIN_SCHEDULES:
        register(cls)


@hookimpl
def ralu_register_feature_caches(register: RegisterCache) -> None:
    for cls in BUILTIN_CACHES:
        register(cls)
