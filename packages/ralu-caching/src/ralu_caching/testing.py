"""Tiny random-weight U-Net pipelines (Stable Diffusion 1.x and XL) built offline, for tests of the U-Net path."""

from __future__ import annotations

from typing import Any

from ralu_core.pipelines.offline import make_clip_tokenizer, seeded_components, small_clip, small_vae


def _unet(**conditioning: Any) -> Any:
    """A 2-level, 32-wide U-Net of the Stable Diffusion design; `conditioning` adds what a variant needs."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(  # type: ignore[no-untyped-call]
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        **conditioning,
    )


def make_sd_pipeline(seed: int = 0) -> Any:
    """A Stable Diffusion 1.x-shaped pipeline (2-level U-Net, 32 wide, one CLIP layer), no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = make_clip_tokenizer()
    modules = seeded_components(
        {
            "unet": lambda: _unet(cross_attention_dim=32),
            "vae": lambda: small_vae(
                (8, 8, 16, 16), 4, scaling_factor=0.18215, shift_factor=None, sample_size=64, latent_channels=4
            ),
            "text_encoder": lambda: small_clip(
                CLIPTextModel, tokenizer, hidden=32, projection=32, heads=2, layers=1, ffn=64, act="quick_gelu"
            ),
        },
        seed=seed,
    )
    scheduler = DDIMScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        scheduler=scheduler,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **modules,
    )


def make_sdxl_pipeline(seed: int = 0) -> Any:
    """A Stable Diffusion XL-shaped pipeline: two CLIP towers (the second with a projection feeding the
    added time embedding), a 2-level U-Net with SDXL's ``text_time`` conditioning, no safety checker."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = make_clip_tokenizer(), make_clip_tokenizer()
    modules = seeded_components(
        {
            "unet": lambda: _unet(
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                transformer_layers_per_block=(1, 2),
                projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text + six time ids
                cross_attention_dim=64,  # the two towers' hidden states, concatenated
            ),
            "vae": lambda: small_vae(
                (8, 8, 16, 16), 4, scaling_factor=0.13025, shift_factor=None, sample_size=64, latent_channels=4
            ),
            "text_encoder": lambda: small_clip(
                CLIPTextModel, tokenizer, hidden=32, projection=32, heads=2, layers=2, ffn=64, act="quick_gelu"
            ),
            "text_encoder_2": lambda: small_clip(
                CLIPTextModelWithProjection,
                tokenizer_2,
                hidden=32,
                projection=32,
                heads=2,
                layers=2,
                ffn=64,
                act="gelu",
            ),
        },
        seed=seed,
    )
    scheduler = EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer_2, force_zeros_for_empty_prompt=True, **modules
    )
