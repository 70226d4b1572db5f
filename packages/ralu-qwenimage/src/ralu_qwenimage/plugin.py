"""ralu-qwenimage's plugin (entry point ``qwenimage = "ralu_qwenimage.plugin:plugin"``): the Qwen-Image adapter and
its recipes. Registering imports no diffusers."""

from __future__ import annotations

from ralu_core.pipelines.dit import AdapterPlugin
from ralu_qwenimage.adapter import QwenImageAdapter

RECIPES = ("qwenimage-baseline", "ras-qwenimage", "ralu-qwenimage-4x")

plugin = AdapterPlugin(QwenImageAdapter(), "ralu_qwenimage", RECIPES)
