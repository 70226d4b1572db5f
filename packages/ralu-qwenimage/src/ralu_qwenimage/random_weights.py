"""Qwen-Image at full size with random weights and random text embeddings, for timing without a download.

``qwen-image-random`` (a named model of the CLI, registered by `ralu_qwenimage.plugin`; e.g. ``ralu bench --model
qwen-image-random --device cuda --dtype bfloat16``) is Qwen-Image's transformer (20B) and VAE, built from the
shipped configs straight on the device, and a `RandomTextQwenImagePipeline` in place of the Qwen2.5-VL text
encoder: every prompt becomes a random embedding of `TEXT_TOKENS` tokens of the encoder's width. A step then costs
what it costs with the real weights; the images mean nothing. The text encoder, run once per prompt, is not timed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

from ralu_core.measurement.random_weights import check_fits, random_module, random_text
from ralu_core.pipelines.diffusers_private import execution_device
from ralu_qwenimage.flops_profile import TEXT_TOKENS, load_qwen_image_config

__all__ = ["RandomTextQwenImagePipeline", "qwen_image_random", "random_qwenimage_pipeline"]


class RandomTextQwenImagePipeline(QwenImagePipeline):
    """A QwenImagePipeline without its text encoder: a prompt becomes random embeddings of `TEXT_TOKENS` tokens,
    a pure function of the prompt (no padding: the mask is None, as the pipeline returns for equal lengths).
    Embeddings passed in are used as they are, as QwenImagePipeline does."""

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        max_sequence_length: int = 1024,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        pipe: Any = self  # diffusers' pipelines carry their components as untyped attributes
        device = device or execution_device(pipe)
        dtype, config = pipe.transformer.dtype, pipe.transformer.config
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            shape = (min(TEXT_TOKENS, max_sequence_length), config.joint_attention_dim)
            prompt_embeds = random_text(prompts, shape, device, dtype, salt="qwen2.5-vl")
            prompt_embeds_mask = None
        embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        mask = None if prompt_embeds_mask is None else prompt_embeds_mask.repeat_interleave(num_images_per_prompt, 0)
        return embeds.to(device=device, dtype=dtype), mask


def random_qwenimage_pipeline(
    transformer: Mapping[str, Any],
    vae: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
) -> RandomTextQwenImagePipeline:
    """A `RandomTextQwenImagePipeline` of these component configs, its weights drawn on `device` in `dtype` after
    a check that they fit."""
    parts = [(QwenImageTransformer2DModel, transformer), (AutoencoderKLQwenImage, vae)]
    check_fits("this Qwen-Image pipeline", parts, device, dtype)
    return RandomTextQwenImagePipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler)),  # type: ignore[no-untyped-call]
        vae=random_module(AutoencoderKLQwenImage, vae, device, dtype, seed=seed + 1),
        text_encoder=None,
        tokenizer=None,
        transformer=random_module(QwenImageTransformer2DModel, transformer, device, dtype, seed=seed),
    )


def qwen_image_random(device: str, dtype: torch.dtype) -> RandomTextQwenImagePipeline:
    """Qwen-Image's architecture (20B transformer, its causal 3-D VAE) with random weights on `device`."""
    configs = {part: load_qwen_image_config(part) for part in ("transformer", "vae", "scheduler")}
    return random_qwenimage_pipeline(configs["transformer"], configs["vae"], configs["scheduler"], device, dtype)
