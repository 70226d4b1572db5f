"""Helpers of the caching tests: a published RALU recipe with a different `cache:`, and two SD3 evaluations in
one cache context (two consecutive steps) for caches that decide per image."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import torch

from ralu_core.pipelines.pipeline_call import cache_context
from ralu_core.recipes import Recipe, load_recipe_text


def with_cache(recipe: str, cache_yaml: str) -> Recipe:
    """`recipe` (ralu-flux-7x, ralu-sd3-3x, flux-baseline, sd3-baseline) with ``cache: <cache_yaml>``."""
    package = "ralu_flux" if "flux" in recipe else "ralu_sd3"
    text = (files(package) / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8")
    text = text.replace("cache: none\n", "").replace(f"name: {recipe}\n", f"name: {recipe}-cached\n")
    return load_recipe_text(f"{text.rstrip()}\ncache: {cache_yaml}\n", source=f"{recipe}+{cache_yaml}")


def sd3_inputs(sd3, batch: int, seed: int) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    config = sd3.transformer.config
    g = torch.Generator().manual_seed(seed)
    return {
        "encoder_hidden_states": torch.randn(batch, 8, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, config.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), 500.0),
    }


def run_twice(sd3, first: torch.Tensor, second: torch.Tensor, rows: slice, cache: Any) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Two evaluations in one cache context, as two consecutive steps; the second step's output."""
    text = {k: v[rows] for k, v in sd3_inputs(sd3, 2, 0).items()}
    with cache.attach(sd3.transformer), cache_context(sd3.transformer, "cond", None, torch.tensor(500.0)):
        sd3.transformer(hidden_states=first[rows], return_dict=False, **text)
        return sd3.transformer(hidden_states=second[rows], return_dict=False, **text)[0]  # type: ignore[no-any-return]
