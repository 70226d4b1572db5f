"""Strategy kinds (base) and the built-in strategies of ralu-core."""

from ralu_core.strategies.base import (
    FeatureCache,
    PlannedStep,
    ResolutionTransition,
    SelectionRequest,
    Strategy,
    TimestepSchedule,
    TokenSelector,
    TransitionRequest,
)

__all__ = [
    "FeatureCache",
    "PlannedStep",
    "ResolutionTransition",
    "SelectionRequest",
    "Strategy",
    "TimestepSchedule",
    "TokenSelector",
    "TransitionRequest",
]
