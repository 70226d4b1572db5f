"""ralu-sd3's plugin (entry point ``sd3 = "ralu_sd3.plugin:plugin"``): the SD3 adapter, its recipes and its
full-size random-weight models."""

from __future__ import annotations

from ralu_core.dit import AdapterPlugin
from ralu_sd3.adapter import SD3Adapter
from ralu_sd3.random_weights import random_weight_models

RECIPES = ("sd3-baseline", "ralu-sd3-2x", "ralu-sd3-3x", "ras-sd3", "ras-sd3-fast", "ralu-ras-sd3-3x")

plugin = AdapterPlugin(SD3Adapter(), "ralu_sd3", RECIPES, models=random_weight_models)
