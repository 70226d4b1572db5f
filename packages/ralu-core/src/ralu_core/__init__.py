"""ralu-core: training-free acceleration of diffusion transformers by composable strategies.

import ralu_core
fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
image = fast("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
"""

from importlib.metadata import PackageNotFoundError, version

from ralu_core.accelerate import AcceleratedPipeline, accelerate
from ralu_core.errors import PluginError, RaluError, RecipeError, UnsupportedPipelineError
from ralu_core.hookspecs import hookimpl
from ralu_core.pipeline_call import current_timestep
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import Recipe, Stage, StrategyRef, load_recipe_file, load_recipe_text
from ralu_core.tokens import TokenGrid, TokenState

try:
    __version__ = version("ralu-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "AcceleratedPipeline",
    "PluginError",
    "RaluError",
    "Recipe",
    "RecipeError",
    "Registry",
    "Stage",
    "StrategyRef",
    "TokenGrid",
    "TokenState",
    "UnsupportedPipelineError",
    "accelerate",
    "create_plugin_manager",
    "current_timestep",
    "hookimpl",
    "load_recipe_file",
    "load_recipe_text",
]
