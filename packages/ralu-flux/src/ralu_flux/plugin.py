"""ralu-flux's plugin (entry point ``flux = "ralu_flux.plugin:plugin"``): the Flux adapter, its recipes and its
full-size random-weight model.

Registering imports no diffusers: the adapter names diffusers' classes only where it runs a call, and the
random-weight model is built by `ralu_flux.random_weights`, imported when it is loaded.
"""

from __future__ import annotations

from typing import Any

from ralu_core.pipelines.dit import AdapterPlugin
from ralu_core.plugins.models import NamedModel
from ralu_flux.adapter import FluxAdapter

RECIPES = (
    *("flux-baseline", "ralu-flux-4x", "ralu-flux-5x", "ralu-flux-7x", "ras-flux", "ralu-ras-flux-7x"),
    "ralu-flux-schnell",
)


def _flux_dev_random(device: str, dtype: Any) -> Any:
    from ralu_flux.random_weights import flux_dev_random

    return flux_dev_random(device, dtype)


def _flux_schnell_random(device: str, dtype: Any) -> Any:
    from ralu_flux.random_weights import flux_schnell_random

    return flux_schnell_random(device, dtype)


def random_weight_models() -> list[NamedModel]:
    """The full-size random-weight FLUX models of the CLI."""
    return [
        NamedModel(
            name="flux-dev-random",
            adapter="flux",
            architecture="flux-dev",
            load=_flux_dev_random,
            loads_on_device=True,
            note=(
                "flux-dev-random is FLUX.1-dev's architecture at full size with RANDOM weights and random text "
                "embeddings (no text encoders): for timing and memory on a GPU (22 GiB of weights in bfloat16), not "
                "for images."
            ),
            call_defaults={"height": 1024, "width": 1024, "guidance_scale": 3.5, "max_sequence_length": 512},
        ),
        NamedModel(
            name="flux-schnell-random",
            adapter="flux",
            architecture="flux-schnell",
            load=_flux_schnell_random,
            loads_on_device=True,
            note=(
                "flux-schnell-random is FLUX.1-schnell's architecture at full size with RANDOM weights and random "
                "text embeddings (no text encoders): for timing and memory on a GPU (22 GiB of weights in bfloat16), "
                "not for images."
            ),
            call_defaults={"height": 1024, "width": 1024, "num_inference_steps": 4, "max_sequence_length": 512},
        ),
    ]


plugin = AdapterPlugin(FluxAdapter(), "ralu_flux", RECIPES, models=random_weight_models)
