"""FLUX.2-dev at full size with random weights and random text embeddings, for timing without a download.

``flux2-dev-random`` (a named model of the CLI, registered by `ralu_flux2.plugin`; e.g. ``ralu bench --model
flux2-dev-random --device cuda --dtype bfloat16``) is FLUX.2-dev's transformer (32B) and VAE, built from the shipped
configs straight on the device, and a `RandomTextFlux2Pipeline` in place of the Mistral Small 3.1 text encoder: every
prompt becomes a random embedding of ``max_sequence_length`` tokens of the stacked hidden states' width. A step then
costs what it costs with the real weights; the images mean nothing. The text encoder (24B) is not timed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

from ralu_core.measurement.random_weights import check_fits, random_module, random_text
from ralu_core.pipelines.diffusers_private import execution_device
from ralu_flux2.flops_profile import load_flux2_dev_config

__all__ = ["RandomTextFlux2Pipeline", "flux2_dev_random", "random_flux2_pipeline"]


class RandomTextFlux2Pipeline(Flux2Pipeline):
    """A Flux2Pipeline without its text encoder: a prompt becomes random embeddings of the shape the encoder gives
    (``max_sequence_length`` tokens, padded as the pipeline pads), a pure function of the prompt. Embeddings passed
    in are used as they are, as Flux2Pipeline does."""

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        text_encoder_out_layers: tuple[int, ...] = (10, 20, 30),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pipe: Any = self  # diffusers' pipelines carry their components as untyped attributes
        device = device or execution_device(pipe)
        dtype, config = pipe.transformer.dtype, pipe.transformer.config
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [""])
            shape = (max_sequence_length, config.joint_attention_dim)
            prompt_embeds = random_text(prompts, shape, device, dtype, salt="mistral-small-3.1")
        embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0).to(device=device, dtype=dtype)
        return embeds, pipe._prepare_text_ids(embeds).to(device)


def random_flux2_pipeline(
    transformer: Mapping[str, Any],
    vae: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
) -> RandomTextFlux2Pipeline:
    """A `RandomTextFlux2Pipeline` of these component configs, its weights drawn on `device` in `dtype` after a
    check that they fit."""
    parts = [(Flux2Transformer2DModel, transformer), (AutoencoderKLFlux2, vae)]
    check_fits("this FLUX.2 pipeline", parts, device, dtype)
    return RandomTextFlux2Pipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler)),  # type: ignore[no-untyped-call]
        vae=random_module(AutoencoderKLFlux2, vae, device, dtype, seed=seed + 1),
        text_encoder=None,
        tokenizer=None,
        transformer=random_module(Flux2Transformer2DModel, transformer, device, dtype, seed=seed),
    )


def flux2_dev_random(device: str, dtype: torch.dtype) -> RandomTextFlux2Pipeline:
    """FLUX.2-dev's architecture (32B transformer, its 32-channel VAE) with random weights on `device`."""
    configs = {part: load_flux2_dev_config(part) for part in ("transformer", "vae", "scheduler")}
    return random_flux2_pipeline(configs["transformer"], configs["vae"], configs["scheduler"], device, dtype)
