"""Offline, random-weight ``diffusers.StableDiffusion3Pipeline`` instances for tests and CPU benchmarks.

Why this exists: ralu's SD3 adapter must be exercised end to end (three-encoder prompt encoding with
classifier-free guidance, the cropped position embedding, the flow-matching scheduler, the transformer,
VAE decoding, ``save_pretrained``/``from_pretrained``) where no weights or tokenizer files can be
downloaded. Every component is built here from an in-code config with deterministic random weights
(``seed`` -> bit-identical weights); the two CLIP tokenizers and the T5 tokenizer come from
:mod:`ralu_core.pipelines.offline` (a hand-written vocabulary in the very classes SD3 uses).

The architecture mirrors SD3-medium: a 16-channel VAE with SD3's scaling/shift factors (1.5305/0.0609),
8x downsampling and no quant convs; patch size 2; a flow-matching Euler scheduler with static shift 3.0;
two CLIP text encoders with projection, whose penultimate hidden states are concatenated and zero-padded
to the T5 width (so their hidden sizes must sum to at most ``joint_attention_dim``) and whose projected
pooled outputs are concatenated into ``pooled_projection_dim``; and a T5 encoder. Images produced with
random weights are noise-like: use these pipelines for plumbing, shapes, determinism and relative speed,
never image quality.

Variants:

* ``"sd3-tiny"`` -- unit tests: 2 joint blocks, 2 heads x 16 dims, ``joint_attention_dim`` 32, CLIP hidden
  sizes 8 + 16 (padded to 32) with projections 24 + 40 (pooled 64), a 4-level VAE with 8-16 channels.
  ``sample_size`` 8 makes the default image 64x64 (a 4x4 patch grid); ``pos_embed_max_size`` 16 allows
  up to 256x256 pixels and makes every test size a real centred crop of the position grid.
* ``"sd35-tiny"`` -- as ``"sd3-tiny"`` with SD3.5's per-head RMS q/k norm and, like SD3.5-medium, a
  second (image-only) attention in the first block (``dual_attention_layers=(0,)``).
* ``"sd3-mid"`` -- CPU benchmarks where the transformer dominates: 8 joint blocks, 4 heads x 64 dims
  (inner width 256), ``joint_attention_dim`` 256, CLIPs of width 64 and 128, a small VAE (16-32
  channels); ``sample_size`` 64 (default 512x512, a 32x32 patch grid) and ``pos_embed_max_size`` 96, so
  the position grid is spaced as SD3's (``base_size / pos_embed_max_size`` = 1/3). At 512x512 with
  ``max_sequence_length=64`` (1024 image + 141 text tokens) one batch-1 transformer forward is 25.7 GFLOPs
  (27.7 with 128 T5 tokens, 31.9 with the default 256), measured at ~0.11 s on two CPU cores; with CFG
  the pipeline runs it at batch 2, ~0.22 s per denoising step. Attention is 43% of it (SD3-medium at
  1024x1024: 32%), so token-count savings show up in both parts. The VAE decode (22 GFLOPs, ~0.2 s)
  runs once per image.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5EncoderModel,
    T5Tokenizer,
)

from ralu_core.pipelines.offline import (
    make_clip_tokenizer,
    make_t5_tokenizer,
    seeded_components,
    small_clip,
    small_t5,
    small_vae,
)

__all__ = ["Variant", "make_sd3_pipeline", "variant_config"]

Variant = Literal["sd3-tiny", "sd35-tiny", "sd3-mid"]


@attrs.frozen
class _ClipSpec:
    """One CLIP text tower: ``hidden`` feeds the token sequence, ``projection`` the pooled vector."""

    hidden: int
    projection: int
    heads: int
    act: str  # CLIP-L uses quick_gelu, OpenCLIP bigG plain gelu


@attrs.frozen
class _VariantSpec:
    """Widths of one pipeline variant; see the module docstring for the rationale."""

    num_layers: int
    attention_head_dim: int
    num_attention_heads: int
    text_dim: int  # T5 d_model == transformer joint_attention_dim
    t5_heads: int
    clips: tuple[_ClipSpec, _ClipSpec]
    sample_size: int
    pos_embed_max_size: int
    qk_norm: str | None
    dual_attention_layers: tuple[int, ...]
    vae_channels: tuple[int, int, int, int]
    vae_groups: int

    @property
    def pooled_dim(self) -> int:
        """SD3 concatenates the two projected CLIP pooled outputs."""
        return sum(clip.projection for clip in self.clips)


_TINY = _VariantSpec(
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    text_dim=32,
    t5_heads=2,
    clips=(_ClipSpec(8, 24, 2, "quick_gelu"), _ClipSpec(16, 40, 2, "gelu")),
    sample_size=8,
    pos_embed_max_size=16,
    qk_norm=None,
    dual_attention_layers=(),
    vae_channels=(8, 8, 16, 16),
    vae_groups=4,
)

_VARIANTS: dict[str, _VariantSpec] = {
    "sd3-tiny": _TINY,
    "sd35-tiny": attrs.evolve(_TINY, qk_norm="rms_norm", dual_attention_layers=(0,)),
    "sd3-mid": _VariantSpec(
        num_layers=8,
        attention_head_dim=64,
        num_attention_heads=4,
        text_dim=256,
        t5_heads=4,
        clips=(_ClipSpec(64, 64, 2, "quick_gelu"), _ClipSpec(128, 128, 2, "gelu")),
        sample_size=64,
        pos_embed_max_size=96,
        qk_norm=None,
        dual_attention_layers=(),
        vae_channels=(16, 32, 32, 32),
        vae_groups=8,
    ),
}


def variant_config(variant: str, component: str) -> dict[str, Any] | None:
    """The parts of a component's config that decide image sizes (VAE depth, patch), without building it."""
    if variant not in _VARIANTS:
        return None
    if component == "vae":
        return {"block_out_channels": list(_VARIANTS[variant].vae_channels)}
    return {"patch_size": 2} if component == "transformer" else None


def _transformer(spec: _VariantSpec) -> SD3Transformer2DModel:
    inner = spec.num_attention_heads * spec.attention_head_dim
    return SD3Transformer2DModel(  # type: ignore[no-untyped-call]
        sample_size=spec.sample_size,
        patch_size=2,
        in_channels=16,
        num_layers=spec.num_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.text_dim,
        caption_projection_dim=inner,  # the blocks run at the inner width, so these must agree
        pooled_projection_dim=spec.pooled_dim,
        out_channels=16,
        pos_embed_max_size=spec.pos_embed_max_size,
        dual_attention_layers=spec.dual_attention_layers,
        qk_norm=spec.qk_norm,
    )


def _vae(spec: _VariantSpec) -> AutoencoderKL:
    return small_vae(
        spec.vae_channels, spec.vae_groups, scaling_factor=1.5305, shift_factor=0.0609, sample_size=spec.sample_size * 8
    )


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3-medium's scheduler config: static shift 3.0, no resolution-dependent shifting."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # type: ignore[no-untyped-call]


def _clip_model(clip: _ClipSpec, tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    # Two layers: SD3 reads the penultimate hidden state, which must be a real layer's output.
    return small_clip(
        CLIPTextModelWithProjection,
        tokenizer,
        hidden=clip.hidden,
        projection=clip.projection,
        heads=clip.heads,
        layers=2,
        ffn=4 * clip.hidden,
        act=clip.act,
    )


def _t5_model(spec: _VariantSpec, tokenizer: T5Tokenizer) -> T5EncoderModel:
    return small_t5(tokenizer, spec.text_dim, heads=spec.t5_heads, head_dim=spec.text_dim // spec.t5_heads)


def make_sd3_pipeline(
    variant: Variant = "sd3-tiny", *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> StableDiffusion3Pipeline:
    """Build a random-weight SD3-shaped ``StableDiffusion3Pipeline`` entirely offline.

    The same ``seed`` gives bit-identical weights (each component is initialised from its own seed
    derived from ``seed``; the caller's global RNG state is left untouched). Weights are initialised in
    float32 and then cast to ``dtype``. The progress bar is left at diffusers' default.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
    spec = _VARIANTS[variant]
    clip_spec, clip_2_spec = spec.clips
    tokenizer, tokenizer_2, tokenizer_3 = make_clip_tokenizer(), make_clip_tokenizer(), make_t5_tokenizer()

    modules = seeded_components(
        {
            "transformer": lambda: _transformer(spec),
            "vae": lambda: _vae(spec),
            "text_encoder": lambda: _clip_model(clip_spec, tokenizer),
            "text_encoder_2": lambda: _clip_model(clip_2_spec, tokenizer_2),
            "text_encoder_3": lambda: _t5_model(spec, tokenizer_3),
        },
        seed=seed,
        dtype=dtype,
    )
    return StableDiffusion3Pipeline(  # type: ignore[no-untyped-call]
        scheduler=_scheduler(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
        **modules,
    )


def make_sd3_controlnet(pipe: Any, seed: int = 1, **options: Any) -> Any:
    """A tiny SD3ControlNetModel for `pipe`'s transformer (one block; `options` override its config, e.g.
    ``force_zeros_for_pooled_projection``), random weights (`seed`) everywhere, its zero-initialised output
    projections included, so that it changes the image."""
    from diffusers import SD3ControlNetModel

    config = pipe.transformer.config
    keys = (
        *("sample_size", "patch_size", "in_channels", "attention_head_dim", "num_attention_heads"),
        *("joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels"),
        *("pos_embed_max_size", "qk_norm"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        controlnet: Any = SD3ControlNetModel(**{key: config[key] for key in keys}, num_layers=1, **options)
        with torch.no_grad():
            for parameter in controlnet.parameters():
                if not parameter.any():
                    parameter.normal_(0.0, 0.02)
    return controlnet
