"""Offline, random-weight ``diffusers.FluxPipeline`` instances for tests and CPU benchmarks.

Why this exists: ralu's FLUX adapter must be exercised end to end (prompt encoding, packing, the
flow-matching scheduler, the transformer, VAE decoding, ``save_pretrained``/``from_pretrained``) in
environments where no model weights or tokenizer files can be downloaded. Every component is therefore
built here from an in-code config with deterministic random weights (``seed`` -> bit-identical
weights), and the two tokenizers come from :mod:`ralu_core.pipelines.offline` (a small hand-written
vocabulary, no files, in the very classes FLUX.1 uses), so ``FluxPipeline.encode_prompt`` runs unchanged.
``VOCABULARY``, ``make_clip_tokenizer`` and ``make_t5_tokenizer`` are re-exported here for existing imports.

The architecture mirrors FLUX.1-dev (16-channel VAE with shift/scale factors and 8x downsampling,
guidance embedding, dynamic-shift flow-matching scheduler, CLIP pooled + T5 sequence conditioning), but
the widths are tiny. Images produced with random weights are noise-like and carry no meaning: use these
pipelines to test plumbing, shapes, determinism and relative speed, never image quality.

Sizes:

* ``"tiny"`` -- unit tests: 1 double + 1 single block, 2 heads x 16 dims, 32-wide text embeddings,
  a 4-level VAE with 8-16 channels. A 64x64 image with a few steps runs in tens of milliseconds.
* ``"mid"`` -- CPU benchmarks where the transformer dominates: 4 double + 8 single blocks, 4 heads x 64
  dims (inner width 256), ``joint_attention_dim`` 256, 64-wide CLIP, and a small VAE (16-32 channels).
  At 256x256 (256 packed image tokens) one transformer forward costs ~9 GFLOPs with
  ``max_sequence_length=128`` (~55 ms per step on two CPU cores) and ~22 GFLOPs with the default 512
  text tokens (~110 ms; then the text stream dominates). The VAE decode is ~5 GFLOPs, run once.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    T5EncoderModel,
    T5Tokenizer,
)

from ralu_core.pipelines.offline import (
    VOCABULARY,
    make_clip_tokenizer,
    make_t5_tokenizer,
    seeded_components,
    small_clip,
    small_t5,
    small_vae,
)
from ralu_flux.adapter import latent_channels

__all__ = [
    "VOCABULARY",
    "make_clip_tokenizer",
    "make_flux_pipeline",
    "make_t5_tokenizer",
    "size_config",
    "tiny_flux_pipeline",
]


@attrs.frozen
class _SizeSpec:
    """Widths of one pipeline size; see the module docstring for the rationale."""

    num_layers: int
    num_single_layers: int
    attention_head_dim: int
    num_attention_heads: int
    axes_dims_rope: tuple[int, int, int]
    text_dim: int  # T5 d_model == transformer joint_attention_dim
    clip_dim: int  # CLIP hidden size == transformer pooled_projection_dim
    vae_channels: tuple[int, int, int, int]
    vae_groups: int


_SIZES: dict[str, _SizeSpec] = {
    "tiny": _SizeSpec(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        axes_dims_rope=(4, 6, 6),
        text_dim=32,
        clip_dim=32,
        vae_channels=(8, 8, 16, 16),
        vae_groups=4,
    ),
    "mid": _SizeSpec(
        num_layers=4,
        num_single_layers=8,
        attention_head_dim=64,
        num_attention_heads=4,
        axes_dims_rope=(8, 28, 28),
        text_dim=256,
        clip_dim=64,
        vae_channels=(16, 32, 32, 32),
        vae_groups=8,
    ),
}


def size_config(size: str, component: str) -> dict[str, Any] | None:
    """The parts of a component's config that decide image sizes (VAE depth, patch), without building it."""
    if size not in _SIZES:
        return None
    if component == "vae":
        return {"block_out_channels": list(_SIZES[size].vae_channels)}
    return {"patch_size": 1} if component == "transformer" else None


def _transformer(spec: _SizeSpec) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing, as in FLUX.1
        num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.text_dim,
        pooled_projection_dim=spec.clip_dim,
        guidance_embeds=True,
        axes_dims_rope=spec.axes_dims_rope,
    )


def _vae(spec: _SizeSpec) -> AutoencoderKL:
    return small_vae(spec.vae_channels, spec.vae_groups, scaling_factor=0.3611, shift_factor=0.1159, sample_size=256)


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1-dev's scheduler config."""
    return FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _clip_model(spec: _SizeSpec, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return small_clip(
        CLIPTextModel,
        tokenizer,
        hidden=spec.clip_dim,
        projection=spec.clip_dim,
        heads=2,
        layers=1,
        ffn=2 * spec.clip_dim,
        act="quick_gelu",
    )


def _t5_model(spec: _SizeSpec, tokenizer: T5Tokenizer) -> T5EncoderModel:
    return small_t5(tokenizer, spec.text_dim, heads=2, head_dim=16)


def make_flux_pipeline(
    size: Literal["tiny", "mid"] = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> FluxPipeline:
    """Build a random-weight FLUX.1-dev-shaped ``FluxPipeline`` entirely offline.

    The same ``seed`` gives bit-identical weights (each component is initialised from its own seed
    derived from ``seed``; the caller's global RNG state is left untouched). Weights are initialised in
    float32 and then cast to ``dtype``. The progress bar is left at diffusers' default.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    spec = _SIZES[size]
    clip_tokenizer = make_clip_tokenizer()
    t5_tokenizer = make_t5_tokenizer()

    modules = seeded_components(
        {
            "transformer": lambda: _transformer(spec),
            "vae": lambda: _vae(spec),
            "text_encoder": lambda: _clip_model(spec, clip_tokenizer),
            "text_encoder_2": lambda: _t5_model(spec, t5_tokenizer),
        },
        seed=seed,
        dtype=dtype,
    )
    return FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=_scheduler(),
        tokenizer=clip_tokenizer,
        tokenizer_2=t5_tokenizer,
        **modules,
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """``make_flux_pipeline("tiny", seed=seed)`` -- the unit-test pipeline."""
    return make_flux_pipeline("tiny", seed=seed)


def packed_mask(pipe: Any, mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) image-size masks in FLUX's packed latent layout, as FluxInpaintPipeline resizes them: nearest to
    the latent size, one copy per channel, 2 x 2 latent pixels per token."""
    unit = pipe.vae_scale_factor * 2
    latent_height, latent_width = 2 * (height // unit), 2 * (width // unit)
    channels = latent_channels(pipe)
    resized = torch.nn.functional.interpolate(mask, size=(latent_height, latent_width)).repeat(1, channels, 1, 1)
    return pipe._pack_latents(resized, mask.shape[0], channels, latent_height, latent_width)  # type: ignore[no-any-return]


def make_flux_fill_pipeline(seed: int = 0) -> Any:
    """The tiny FLUX pipeline as a FluxFillPipeline: a transformer of the same shape that also reads the masked
    image's latents (16 x 2 x 2 channels) and the mask (8 x 8 pixels x 2 x 2) per token, random weights (`seed`)."""
    from diffusers import FluxFillPipeline

    tiny: Any = make_flux_pipeline("tiny", seed=seed)
    config = {key: value for key, value in tiny.transformer.config.items() if not key.startswith("_")}
    latent = int(config["in_channels"])
    mask = tiny.vae_scale_factor**2 * 4
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel.from_config(
            {**config, "in_channels": 2 * latent + mask, "out_channels": latent}
        )
    return FluxFillPipeline.from_pipe(tiny, transformer=transformer)


def make_flux_controlnet(pipe: Any, seed: int = 1, **options: Any) -> Any:
    """A tiny FluxControlNetModel for `pipe`'s transformer (one double-stream and one single-stream block; `options`:
    ``num_mode`` for a Union ControlNet, ``conditioning_embedding_channels`` for an input hint block), random weights
    (`seed`) everywhere, its zero-initialised output projections included, so that it changes the image."""
    from diffusers import FluxControlNetModel

    config = pipe.transformer.config
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        controlnet: Any = FluxControlNetModel(
            in_channels=config.in_channels,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            pooled_projection_dim=config.pooled_projection_dim,
            guidance_embeds=config.guidance_embeds,
            axes_dims_rope=list(config.axes_dims_rope),
            **options,
        )
        with torch.no_grad():
            for parameter in controlnet.parameters():
                if not parameter.any():
                    parameter.normal_(0.0, 0.02)
    return controlnet


def make_flux_control_pipeline(seed: int = 0) -> Any:
    """The tiny FLUX pipeline as a FluxControlPipeline (FLUX.1 Canny/Depth): a transformer of the same shape that
    also reads the control image's latents per token (16 x 2 x 2 channels), random weights (`seed`)."""
    from diffusers import FluxControlPipeline

    tiny: Any = make_flux_pipeline("tiny", seed=seed)
    config = {key: value for key, value in tiny.transformer.config.items() if not key.startswith("_")}
    latent = int(config["in_channels"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel.from_config({**config, "in_channels": 2 * latent, "out_channels": latent})
    return FluxControlPipeline.from_pipe(tiny, transformer=transformer)


def make_flux_schnell_pipeline(seed: int = 0) -> Any:
    """The tiny FLUX pipeline made as FLUX.1-schnell is: no guidance embedding, a static shift of 1.0 (random
    weights, `seed`)."""
    tiny: Any = make_flux_pipeline("tiny", seed=seed)
    config = {key: value for key, value in tiny.transformer.config.items() if not key.startswith("_")}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel.from_config({**config, "guidance_embeds": False})
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        tiny.scheduler.config, shift=1.0, use_dynamic_shifting=False
    )
    return FluxPipeline.from_pipe(tiny, transformer=transformer, scheduler=scheduler)
