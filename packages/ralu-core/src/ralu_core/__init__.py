"""ralu-core: training-free acceleration of diffusion transformers by composable strategies.

import ralu_core
fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
image = fast("a red circle", generator=torch.Generator().manual_seed(0)).images[0]

The names below load on first use (PEP 562), so that importing a light submodule (the CLI's parser, the
errors) does not import torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ralu_core.errors import (
        CallArgumentError,
        CallError,
        PluginError,
        RaluError,
        RecipeError,
        UnsupportedArgumentError,
        UnsupportedPipelineError,
    )
    from ralu_core.pipelines.accelerated import AcceleratedPipeline, accelerate
    from ralu_core.pipelines.pipeline_call import current_timestep
    from ralu_core.plugins import Registry, create_plugin_manager
    from ralu_core.plugins.hookspecs import hookimpl
    from ralu_core.recipes import Recipe, Stage, StrategyRef, load_recipe_file, load_recipe_text
    from ralu_core.sampling.tokens import TokenGrid, TokenState
    from ralu_core.tuning import TuneResult, tune

try:
    __version__ = version("ralu-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

_EXPORTS = {
    "AcceleratedPipeline": "ralu_core.pipelines.accelerated",
    "accelerate": "ralu_core.pipelines.accelerated",
    "CallArgumentError": "ralu_core.errors",
    "CallError": "ralu_core.errors",
    "PluginError": "ralu_core.errors",
    "RaluError": "ralu_core.errors",
    "RecipeError": "ralu_core.errors",
    "UnsupportedArgumentError": "ralu_core.errors",
    "UnsupportedPipelineError": "ralu_core.errors",
    "hookimpl": "ralu_core.plugins.hookspecs",
    "current_timestep": "ralu_core.pipelines.pipeline_call",
    "Registry": "ralu_core.plugins",
    "create_plugin_manager": "ralu_core.plugins",
    "Recipe": "ralu_core.recipes",
    "Stage": "ralu_core.recipes",
    "StrategyRef": "ralu_core.recipes",
    "load_recipe_file": "ralu_core.recipes",
    "load_recipe_text": "ralu_core.recipes",
    "TokenGrid": "ralu_core.sampling.tokens",
    "TokenState": "ralu_core.sampling.tokens",
    "TuneResult": "ralu_core.tuning",
    "tune": "ralu_core.tuning",
}

__all__ = [
    "AcceleratedPipeline",
    "CallArgumentError",
    "CallError",
    "PluginError",
    "RaluError",
    "Recipe",
    "RecipeError",
    "Registry",
    "Stage",
    "StrategyRef",
    "TokenGrid",
    "TokenState",
    "TuneResult",
    "UnsupportedArgumentError",
    "UnsupportedPipelineError",
    "accelerate",
    "create_plugin_manager",
    "current_timestep",
    "hookimpl",
    "load_recipe_file",
    "load_recipe_text",
    "tune",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ralu_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
