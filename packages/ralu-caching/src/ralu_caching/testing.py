"""A tiny random-weight StableDiffusionPipeline built offline, for tests of the U-Net path."""

from __future__ import annotations

from typing import Any

from ralu_core.offline import make_clip_tokenizer, seeded_components, small_clip, small_vae


def make_sd_pipeline(seed: int = 0) -> Any:
    """A Stable Diffusion 1.x-shaped pipeline (2-level U-Net, 32 wide, one CLIP layer), no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = make_clip_tokenizer()
    modules = seeded_components(
        {
            "unet": lambda: UNet2DConditionModel(  # type: ignore[no-untyped-call]
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=8,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
                norm_num_groups=16,
            ),
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
