"""ralu-flux's plugin (entry point ``flux = "ralu_flux.plugin:plugin"``): the Flux adapter, its recipes and its
full-size random-weight model."""

from __future__ import annotations

from ralu_core.dit import AdapterPlugin
from ralu_flux.adapter import FluxAdapter
from ralu_flux.random_weights import random_weight_models

RECIPES = ("flux-baseline", "ralu-flux-4x", "ralu-flux-5x", "ralu-flux-7x", "ras-flux", "ralu-ras-flux-7x")

plugin = AdapterPlugin(FluxAdapter(), "ralu_flux", RECIPES, models=random_weight_models)
