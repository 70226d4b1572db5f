"""Recipes: YAML -> frozen attrs data -> strategies built from the loaded plugins."""

from ralu_core.recipes.loader import dump_recipe, load_recipe_file, load_recipe_text
from ralu_core.recipes.model import Recipe, Stage, StrategyRef
from ralu_core.recipes.resolve import find_recipe, resolve_recipe
from ralu_core.sampling.runtime import RecipeRuntime, RuntimeStage

__all__ = [
    "Recipe",
    "RecipeRuntime",
    "RuntimeStage",
    "Stage",
    "StrategyRef",
    "dump_recipe",
    "find_recipe",
    "load_recipe_file",
    "load_recipe_text",
    "resolve_recipe",
]
