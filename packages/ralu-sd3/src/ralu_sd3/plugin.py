"""ralu-sd3's plugin (entry point ``sd3 = "ralu_sd3.plugin:plugin"``): the SD3 adapter and its recipes."""

from __future__ import annotations

from ralu_core.dit import AdapterPlugin
from ralu_sd3.adapter import SD3Adapter

RECIPES = ("sd3-baseline", "ralu-sd3-2x", "ralu-sd3-3x", "ras-sd3", "ras-sd3-fast", "ralu-ras-sd3-3x")

plugin = AdapterPlugin(SD3Adapter(), "ralu_sd3", RECIPES)
