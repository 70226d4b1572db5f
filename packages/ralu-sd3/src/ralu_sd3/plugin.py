"""ralu-sd3's plugin (entry point ``sd3 = "ralu_sd3.plugin:plugin"``): the SD3 adapter, its recipes and its
full-size random-weight models.

Registering imports no diffusers: the adapter names diffusers' classes only where it runs a call, and the
random-weight models are built by `ralu_sd3.random_weights`, imported when one is loaded.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ralu_core.pipelines.dit import AdapterPlugin
from ralu_core.plugins.models import NamedModel
from ralu_sd3.adapter import SD3Adapter

RECIPES = (
    *("sd3-baseline", "ralu-sd3-2x", "ralu-sd3-3x", "ras-sd3", "ras-sd3-fast", "ralu-ras-sd3-3x"),
    "ralu-sd35-turbo",
)

_NOTE = (
    "{name} is {arch}'s architecture at full size with RANDOM weights and random text embeddings (no text "
    "encoders): for timing and memory on a GPU ({gib} GiB of weights in bfloat16), not for images."
)


def _published_random(arch: str, device: str, dtype: Any) -> Any:
    from ralu_sd3.random_weights import published_random

    return published_random(arch, device, dtype)  # type: ignore[arg-type]


def random_weight_models() -> list[NamedModel]:
    """The full-size random-weight SD3 models of the CLI (1024 x 1024, CFG as the pipelines default to)."""
    published = (
        ("sd3-medium-random", "sd3-medium", "SD3-medium", 4, 7.0),
        ("sd35-large-random", "sd35-large", "SD3.5-large", 15, 3.5),
    )
    return [
        NamedModel(
            name=name,
            adapter="sd3",
            architecture=arch,
            load=partial(_published_random, arch),
            loads_on_device=True,
            note=_NOTE.format(name=name, arch=label, gib=gib),
            call_defaults={"height": 1024, "width": 1024, "guidance_scale": guidance, "max_sequence_length": 256},
        )
        for name, arch, label, gib, guidance in published
    ]


plugin = AdapterPlugin(SD3Adapter(), "ralu_sd3", RECIPES, models=random_weight_models)
