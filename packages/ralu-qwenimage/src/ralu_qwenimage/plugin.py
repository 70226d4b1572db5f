"""ralu-qwenimage's plugin (entry point ``qwenimage = "ralu_qwenimage.plugin:plugin"``): the Qwen-Image adapter, its
recipes and its full-size random-weight model. Registering imports no diffusers."""

from __future__ import annotations

from typing import Any

from ralu_core.pipelines.dit import AdapterPlugin
from ralu_core.plugins.models import NamedModel
from ralu_qwenimage.adapter import QwenImageAdapter

RECIPES = ("qwenimage-baseline", "ras-qwenimage", "ralu-qwenimage-4x")


def _qwen_image_random(device: str, dtype: Any) -> Any:
    from ralu_qwenimage.random_weights import qwen_image_random

    return qwen_image_random(device, dtype)


def random_weight_models() -> list[NamedModel]:
    """The full-size random-weight Qwen-Image model of the CLI."""
    return [
        NamedModel(
            name="qwen-image-random",
            adapter="qwenimage",
            architecture="qwen-image",
            load=_qwen_image_random,
            loads_on_device=True,
            note=(
                "qwen-image-random is Qwen-Image's architecture at full size with RANDOM weights and random text "
                "embeddings (no text encoder): for timing and memory on a GPU (41 GB of weights in bfloat16), not "
                "for images."
            ),
            call_defaults={"height": 1024, "width": 1024, "negative_prompt": " ", "true_cfg_scale": 4.0},
        ),
    ]


plugin = AdapterPlugin(QwenImageAdapter(), "ralu_qwenimage", RECIPES, models=random_weight_models)
