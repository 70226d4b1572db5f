"""The built-in feature cache `none`: every step computes the model.

The slot exists so that caching strategies (ralu-caching) plug into the same engine; `none` is
also the reference they are measured against.
"""

from __future__ import annotations

from typing import ClassVar

from ralu_core.strategies.base import FeatureCache


class NoCache(FeatureCache):
    """No reuse: the model is evaluated at every step."""

    name: ClassVar[str] = "none"


BUILTIN_CACHES: tuple[type[FeatureCache], ...] = (NoCache,)
