"""FLUX.1-dev at full size with random weights and random text embeddings, for timing without a download.

``flux-dev-random`` (a named model of the CLI, registered by `ralu_flux.plugin`; e.g. ``ralu bench --model
flux-dev-random --device cuda --dtype bfloat16``) is FLUX.1-dev's transformer and VAE, built from the shipped
configs straight on the device, and a `RandomTextFluxPipeline` in place of CLIP-L and T5-XXL: every prompt
becomes a random embedding of exactly the shapes they give. A step then costs what it costs with the real
weights; the images mean nothing. The text encoders, which run once per prompt, are not timed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from ralu_core.measurement.random_weights import check_fits, random_module, random_text
from ralu_core.pipelines.diffusers_private import execution_device
from ralu_flux.flops import load_flux_dev_config

__all__ = ["RandomTextFluxPipeline", "flux_dev_random", "random_flux_pipeline"]


class RandomTextFluxPipeline(FluxPipeline):
    """A FluxPipeline without text encoders: a prompt becomes random embeddings of the shapes CLIP-L (pooled)
    and T5-XXL (``max_sequence_length`` tokens) give it, a pure function of the prompt. Embeddings passed
    in are used as they are, as FluxPipeline does."""

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pipe: Any = self  # diffusers' pipelines carry their components as untyped attributes
        device = device or execution_device(pipe)
        dtype, config = pipe.transformer.dtype, pipe.transformer.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if prompt_embeds is None:
            shape = (max_sequence_length, config.joint_attention_dim)
            prompt_embeds = random_text(prompts, shape, device, dtype, salt="t5")
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if pooled_prompt_embeds is None:
            pooled_prompt_embeds = random_text(prompts, (config.pooled_projection_dim,), device, dtype, salt="clip")
            pooled_prompt_embeds = pooled_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        return prompt_embeds.to(device=device, dtype=dtype), pooled_prompt_embeds.to(device, dtype), text_ids


def random_flux_pipeline(
    transformer: Mapping[str, Any],
    vae: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
) -> RandomTextFluxPipeline:
    """A `RandomTextFluxPipeline` of these component configs, its weights drawn on `device` in `dtype`
    after a check that they fit."""
    parts = [(FluxTransformer2DModel, transformer), (AutoencoderKL, vae)]
    check_fits("this FLUX pipeline", parts, device, dtype)
    return RandomTextFluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler)),  # type: ignore[no-untyped-call]
        vae=random_module(AutoencoderKL, vae, device, dtype, seed=seed + 1),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=random_module(FluxTransformer2DModel, transformer, device, dtype, seed=seed),
    )


def flux_dev_random(device: str, dtype: torch.dtype) -> RandomTextFluxPipeline:
    """FLUX.1-dev's architecture (12B transformer, 16-channel VAE) with random weights on `device`."""
    configs = {part: load_flux_dev_config(part) for part in ("transformer", "vae", "scheduler")}  # type: ignore[arg-type]
    return random_flux_pipeline(configs["transformer"], configs["vae"], configs["scheduler"], device, dtype)


def flux_schnell_random(device: str, dtype: torch.dtype) -> RandomTextFluxPipeline:
    """FLUX.1-schnell's architecture (FLUX.1-dev's without the guidance embedding; a static shift of 1.0) with
    random weights on `device`."""
    transformer = {**load_flux_dev_config("transformer"), "guidance_embeds": False}
    scheduler = {**load_flux_dev_config("scheduler"), "shift": 1.0, "use_dynamic_shifting": False}
    return random_flux_pipeline(transformer, load_flux_dev_config("vae"), scheduler, device, dtype)
