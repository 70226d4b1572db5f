"""Where diffusers' public API changed between the releases ralu supports (diffusers >= 0.32).

One place for each such difference, so that a new diffusers release is met here, by a named function with a
test, rather than in the adapters.
"""

from __future__ import annotations

from typing import Any

DTYPE_ARGUMENT_SINCE = (0, 40)
"""diffusers 0.40 renamed ``from_pretrained``'s ``torch_dtype`` to ``dtype`` (the old name warns of its removal)."""


def diffusers_version() -> tuple[int, int]:
    """(major, minor) of the installed diffusers."""
    import diffusers

    major, minor = str(diffusers.__version__).split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def dtype_argument(dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s keyword for the weights' dtype in the installed diffusers: ``dtype`` from 0.40,
    ``torch_dtype`` before (so neither release prints a deprecation notice or ignores the dtype)."""
    return {"dtype" if diffusers_version() >= DTYPE_ARGUMENT_SINCE else "torch_dtype": dtype}
