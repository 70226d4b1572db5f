"""Exceptions that tell the user what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import ClassVar


class RaluError(Exception):
    """Base class of ralu's own errors."""


class RecipeError(RaluError, ValueError):
    """A recipe is malformed: each problem names the path of the bad field (``$.stages[1].end``)."""

    MAX_PROBLEMS: ClassVar[int] = 20
    MAX_PROBLEM_CHARS: ClassVar[int] = 400

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = _clip(source, self.MAX_PROBLEM_CHARS)
        # A hostile file can produce any number of arbitrarily long problems: quote a bounded share.
        self.problems = [_clip(p, self.MAX_PROBLEM_CHARS) for p in problems[: self.MAX_PROBLEMS]]
        if len(problems) > self.MAX_PROBLEMS:
            self.problems.append(f"... and {len(problems) - self.MAX_PROBLEMS} more problems")
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid recipe {self.source}:\n{lines}")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PluginError(RaluError):
    """A plugin failed to load or registered something inconsistent; the message names the plugin."""


class UnsupportedPipelineError(RaluError, TypeError):
    """No installed model adapter knows how to drive this pipeline."""


class CallError(RaluError, ValueError):
    """An accelerated call's arguments cannot be run (a size that does not divide, a generator list of the wrong
    length, steps a recipe fixes): what is wrong and what to pass instead. A ValueError, as diffusers raises."""


class CallArgumentError(RaluError, TypeError):
    """An accelerated call got an argument its pipeline does not take, or one twice (a TypeError, as Python's)."""


class UnsupportedArgumentError(RaluError, NotImplementedError):
    """An argument the pipeline takes that ralu cannot honour yet under a recipe."""


class ConfigFieldError(ValueError):
    """Raised by config validators so that recipe errors can point at the field (``...selector.ratio``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of `options`, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
