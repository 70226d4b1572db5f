"""ralu-flux's plugin (entry point ``flux = "ralu_flux.plugin:plugin"``): the Flux adapter and its recipes."""

from __future__ import annotations

from ralu_core.dit import AdapterPlugin
from ralu_flux.adapter import FluxAdapter

RECIPES = ("flux-baseline", "ralu-flux-4x", "ralu-flux-5x", "ralu-flux-7x", "ras-flux", "ralu-ras-flux-7x")

plugin = AdapterPlugin(FluxAdapter(), "ralu_flux", RECIPES)
