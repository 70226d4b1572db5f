"""Exceptions that tell the user what is wrong and how to fix it."""

from __future__ import annotations


class RaluError(Exception):
    """Base class of ralu's own errors."""


class RecipeError(RaluError, ValueError):
    """A recipe is malformed: each problem names the path of the bad field (``$.stages[1].end``)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid recipe {source}:\n{lines}")


class PluginError(RaluError):
    """A plugin failed to load or registered something inconsistent; the message names the plugin."""


class UnsupportedPipelineError(RaluError, TypeError):
    """No installed model adapter knows how to drive this pipeline."""


class ConfigFieldError(ValueError):
    """Raised by config validators so that recipe errors can point at the field (``...selector.ratio``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)
