"""SD3-medium and SD3.5-large at full size with random weights and random text embeddings, for timing.

``sd3-medium-random`` and ``sd35-large-random`` (named models of the CLI, e.g. ``ralu bench --model
sd3-medium-random --device cuda --dtype bfloat16``) are the published transformers and VAE built from the
shipped configs straight on the device, and a `RandomTextSD3Pipeline` in place of CLIP-L, CLIP-G and
T5-XXL: every prompt becomes a random embedding of exactly the shapes they give (77 CLIP tokens and
``max_sequence_length`` T5 tokens, 4096 wide; a 2048-wide pooled vector). A step then costs what it costs
with the real weights; the images mean nothing. The text encoders, run once per prompt, are not timed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from ralu_core.measurement.random_weights import check_fits, random_module, random_text
from ralu_core.pipelines.diffusers_private import execution_device
from ralu_sd3.flops import load_sd3_config

__all__ = ["RandomTextSD3Pipeline", "published_random", "random_sd3_pipeline"]

CLIP_TOKENS = 77
"""SD3's CLIP encoders read 77 tokens; their embeddings come first in the joint text sequence."""

Prompt = str | list[str] | None


class RandomTextSD3Pipeline(StableDiffusion3Pipeline):
    """A StableDiffusion3Pipeline without text encoders: a prompt (and the negative prompt, "" by default)
    becomes random embeddings of the shapes the three encoders give it, a pure function of the prompt.
    Embeddings passed in are used as they are, as StableDiffusion3Pipeline does."""

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: Prompt,
        prompt_2: Prompt = None,
        prompt_3: Prompt = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Prompt = None,
        negative_prompt_2: Prompt = None,
        negative_prompt_3: Prompt = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        max_sequence_length: int = 256,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        device = device or execution_device(self)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if prompt_embeds is not None:
            prompts = [""] * prompt_embeds.shape[0]
        length, copies = max_sequence_length, num_images_per_prompt
        embeds, pooled = self._embed(prompts, prompt_embeds, pooled_prompt_embeds, length, copies, device)
        if not do_classifier_free_guidance:
            return embeds, None, pooled, None
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        negative, negative_pooled = self._embed(
            negatives, negative_prompt_embeds, negative_pooled_prompt_embeds, length, copies, device
        )
        return embeds, negative, pooled, negative_pooled

    def _embed(
        self,
        prompts: list[str],
        embeds: torch.Tensor | None,
        pooled: torch.Tensor | None,
        max_sequence_length: int,
        copies: int,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (joint sequence, pooled) of `prompts`, `copies` images each; given ones kept as they are."""
        transformer = cast(Any, self).transformer
        config, dtype = transformer.config, transformer.dtype
        if embeds is None:
            shape = (CLIP_TOKENS + max_sequence_length, config.joint_attention_dim)
            embeds = random_text(prompts, shape, device, dtype, salt="clip+t5").repeat_interleave(copies, dim=0)
        if pooled is None:
            pooled = random_text(prompts, (config.pooled_projection_dim,), device, dtype, salt="clip-pooled")
            pooled = pooled.repeat_interleave(copies, dim=0)
        return embeds.to(device, dtype), pooled.to(device, dtype)


def random_sd3_pipeline(
    transformer: Mapping[str, Any],
    vae: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    device: torch.device | str,
    dtype: torch.dtype,
    seed: int = 0,
) -> RandomTextSD3Pipeline:
    """A `RandomTextSD3Pipeline` of these component configs, its weights drawn on `device` in `dtype` after a
    check that they fit."""
    parts = [(SD3Transformer2DModel, transformer), (AutoencoderKL, vae)]
    check_fits("this SD3 pipeline", parts, device, dtype)
    return RandomTextSD3Pipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler)),  # type: ignore[no-untyped-call]
        vae=random_module(AutoencoderKL, vae, device, dtype, seed=seed + 1),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
        transformer=random_module(SD3Transformer2DModel, transformer, device, dtype, seed=seed),
    )


Arch = Literal["sd3-medium", "sd35-large"]


def published_random(arch: Arch, device: str, dtype: torch.dtype) -> RandomTextSD3Pipeline:
    configs = {part: load_sd3_config(arch, part) for part in ("transformer", "vae", "scheduler")}  # type: ignore[arg-type]
    return random_sd3_pipeline(configs["transformer"], configs["vae"], configs["scheduler"], device, dtype)
