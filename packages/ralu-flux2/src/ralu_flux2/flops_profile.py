"""FLOPs of FLUX.2 architectures on the meta device: FLUX.2-dev's configs (shipped here), or a local Flux2Pipeline
folder. The Mistral Small 3.1 text encoder (24B) is excluded: it runs once per prompt, as every adapter's."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ralu_core.measurement.dit_profile import DiTFlopsProfile, Reuse
from ralu_core.measurement.flops import FlopCount, cached_meta_module, count_flops
from ralu_core.measurement.flops import vae_decode_flops as core_vae_decode_flops
from ralu_core.pipelines.adapter import check_image_size
from ralu_core.pipelines.pipeline_call import read_component_configs
from ralu_core.sampling.tokens import TokenGrid
from ralu_flux2.adapter import DEFAULT_STEPS, PATCH
from ralu_flux2.attention import attention_modules, stand_in


def load_flux2_dev_config(part: str) -> dict[str, Any]:
    """FLUX.2-dev's ``transformer``, ``vae`` or ``scheduler`` config (a fresh copy)."""
    resource = resources.files("ralu_flux2").joinpath("data", "flux2-dev", f"{part}.json")
    config: dict[str, Any] = json.loads(resource.read_text("utf-8"))
    return config


def _stand_in_for_counting(original: Any, layer: str, store: Callable[[], Any]) -> Any:
    return stand_in(original, layer, store, lambda: None)


class Flux2FlopsProfile(DiTFlopsProfile):
    """Counts Flux2Transformer2DModel forwards (one pass per step: guidance is embedded) and AutoencoderKLFlux2
    decodes, with the pipeline's 512 text tokens (it pads prompts to ``max_sequence_length``)."""

    def __init__(self, name: str, transformer: dict[str, Any], vae: dict[str, Any], *, text_tokens: int = 512) -> None:
        self.name, self.transformer, self.vae = name, transformer, vae
        self.baseline_steps = DEFAULT_STEPS
        self.text_tokens = text_tokens
        self.vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)

    @classmethod
    def from_source(cls, source: str | Path) -> Flux2FlopsProfile:
        """``flux2-dev`` (50 steps, the pipeline's default) or a Flux2Pipeline folder."""
        if str(source) == "flux2-dev":
            return cls("flux2-dev", load_flux2_dev_config("transformer"), load_flux2_dev_config("vae"))
        transformer, vae = read_component_configs(source, "flux2-dev", "Flux2Pipeline")
        return cls(Path(source).name, transformer, vae)

    def grid(self, height: int, width: int) -> TokenGrid:
        check_image_size(height, width, self.vae_factor * PATCH, "for FLUX.2 (VAE factor x 2 x 2 patches)")
        unit = self.vae_factor * PATCH
        channels = int(self.transformer["in_channels"]) // (PATCH * PATCH)
        return TokenGrid(rows=height // unit, cols=width // unit, channels=channels, patch=PATCH)

    def cached_attention(self) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
        return attention_modules, _stand_in_for_counting

    def transformer_forward(self, image_tokens: int, reuse: Reuse | None) -> FlopCount:
        from diffusers import Flux2Transformer2DModel

        model = cached_meta_module(Flux2Transformer2DModel, self.transformer)
        config = model.config
        meta = torch.device("meta")
        inputs = {
            "hidden_states": torch.empty(1, image_tokens, config.in_channels, device=meta),
            "encoder_hidden_states": torch.empty(1, self.text_tokens, config.joint_attention_dim, device=meta),
            "timestep": torch.empty(1, device=meta),
            "guidance": torch.empty(1, device=meta) if config.guidance_embeds else None,
            "txt_ids": torch.empty(self.text_tokens, 4, device=meta),
            "img_ids": torch.empty(image_tokens, 4, device=meta),
            "return_dict": False,
        }
        with torch.no_grad(), nullcontext() if reuse is None else reuse(model):
            return count_flops(lambda: model(**inputs))

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        from diffusers import AutoencoderKLFlux2

        return core_vae_decode_flops(AutoencoderKLFlux2, self.vae, latent_height, latent_width)
