"""ralu-flux2's plugin (entry point ``flux2 = "ralu_flux2.plugin:plugin"``): the FLUX.2 adapter, its recipes and its
full-size random-weight model. Registering imports no diffusers."""

from __future__ import annotations

from typing import Any

from ralu_core.pipelines.dit import AdapterPlugin
from ralu_core.plugins.models import NamedModel
from ralu_flux2.adapter import Flux2Adapter

RECIPES = ("flux2-baseline", "ralu-flux2-4x", "ras-flux2")


def _flux2_dev_random(device: str, dtype: Any) -> Any:
    from ralu_flux2.random_weights import flux2_dev_random

    return flux2_dev_random(device, dtype)


def random_weight_models() -> list[NamedModel]:
    """The full-size random-weight FLUX.2 model of the CLI."""
    return [
        NamedModel(
            name="flux2-dev-random",
            adapter="flux2",
            architecture="flux2-dev",
            load=_flux2_dev_random,
            loads_on_device=True,
            note=(
                "flux2-dev-random is FLUX.2-dev's architecture at full size with RANDOM weights and random text "
                "embeddings (no text encoder): for timing and memory on a GPU (60 GiB of weights in bfloat16), not "
                "for images."
            ),
            call_defaults={"height": 1024, "width": 1024, "guidance_scale": 4.0, "max_sequence_length": 512},
        ),
    ]


plugin = AdapterPlugin(Flux2Adapter(), "ralu_flux2", RECIPES, models=random_weight_models)
