"""ralu-lumina's plugin (entry point ``lumina = "ralu_lumina.plugin:plugin"``): the Lumina-Next adapter and its
recipes. Registering imports no diffusers."""

from __future__ import annotations

from ralu_core.pipelines.dit import AdapterPlugin
from ralu_lumina.adapter import LuminaAdapter

RECIPES = ("lumina-baseline", "ras-lumina", "ralu-lumina-4x")

plugin = AdapterPlugin(LuminaAdapter(), "ralu_lumina", RECIPES)
