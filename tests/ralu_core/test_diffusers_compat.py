"""diffusers' API differences between the releases ralu supports, met in one place."""

from __future__ import annotations

import diffusers
import pytest
import torch

from ralu_core.pipelines.diffusers_compat import dtype_argument


@pytest.mark.parametrize(
    ("version", "keyword"),
    [
        ("0.32.2", "torch_dtype"),
        ("0.39.0", "torch_dtype"),
        ("0.40.0", "dtype"),
        ("0.42.1", "dtype"),
        ("1.0.0.dev0", "dtype"),
    ],
)
def test_the_dtype_keyword_follows_the_installed_release(monkeypatch, version: str, keyword: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(diffusers, "__version__", version)
    assert dtype_argument(torch.bfloat16) == {keyword: torch.bfloat16}
