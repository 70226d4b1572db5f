"""Recipes for the caching tests: a published RALU recipe with a different `cache:`."""

from __future__ import annotations

from importlib.resources import files

from ralu_core.recipes import Recipe, load_recipe_text


def with_cache(recipe: str, cache_yaml: str) -> Recipe:
    """`recipe` (ralu-flux-7x, ralu-sd3-3x, flux-baseline, sd3-baseline) with ``cache: <cache_yaml>``."""
    package = "ralu_flux" if "flux" in recipe else "ralu_sd3"
    text = (files(package) / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8")
    text = text.replace("cache: none\n", "").replace(f"name: {recipe}\n", f"name: {recipe}-cached\n")
    return load_recipe_text(f"{text.rstrip()}\ncache: {cache_yaml}\n", source=f"{recipe}+{cache_yaml}")
