"""Untrained components of ralu's reference text-to-image models, built offline from one frozen config.

Why this exists: no real FLUX/SD3 weights can be downloaded here, so ralu trains small but real
pipelines on the procedural shapes data set (:mod:`ralu_bench.shapes`) and measures quality on them.
This module fixes *what* is trained: real diffusers/transformers classes with tiny widths, so that the
trained result loads with a plain ``FluxPipeline.from_pretrained(dir)``. The training itself lives in
``packages/ralu-bench/scripts/train_reference.py``.

* Tokenizers are built from :data:`~ralu_bench.shapes.CAPTION_WORDS`: every caption word is one token.
* The CLIP and T5 text encoders are tiny, seeded and random, and they stay random (frozen during
  training): the transformer learns to read their features, as FLUX reads its frozen encoders. The
  T5 encoder's relative-position bias is drawn wider than T5's default init, so that each output
  feature mixes its neighbours in an order-dependent way. The FLUX transformer gives every text
  token RoPE position 0, so word order ("a red circle at the top left and a blue square ...") reaches
  it only through these features; with T5's default (nearly flat) init they are almost a bag of words.
* The VAE (3 levels, factor 4: 128 px -> 32 x 32 latent -> 16 x 16 = 256 packed tokens) is trained in
  its own stage and shared with the SD3-architecture reference model.
* The scheduler uses a static shift of 3.0: the built-in RALU recipes assume base shift 3.0.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Literal

import attrs
import numpy as np
import numpy.typing as npt
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from ralu_bench.shapes import CAPTION_WORDS, ShapesDataset
from ralu_core.pipelines.offline import CLIP_MAX_LENGTH, make_clip_tokenizer, make_t5_tokenizer, seeded_components

__all__ = [
    "COMPONENT_ORDER",
    "SD3_COMPONENT_ORDER",
    "Architecture",
    "ReferenceConfig",
    "assemble_flux_pipeline",
    "assemble_sd3_pipeline",
    "build_flux_transformer",
    "build_scheduler",
    "build_sd3_transformer",
    "build_tokenizers",
    "build_vae",
    "render_images",
    "shifted_sigma",
    "untrained_components",
]

Architecture = Literal["flux", "sd3"]

COMPONENT_ORDER: tuple[str, ...] = ("transformer", "vae", "text_encoder", "text_encoder_2")
"""Seed order of the FLUX model's modules: module i is initialised from ``seed * 16 + i`` (see
`seeded_components`)."""

SD3_COMPONENT_ORDER: tuple[str, ...] = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
"""Seed order of the SD3 model's modules (two projected CLIP encoders, then T5)."""

_ORDERS: dict[str, tuple[str, ...]] = {"flux": COMPONENT_ORDER, "sd3": SD3_COMPONENT_ORDER}


@attrs.frozen(kw_only=True)
class ReferenceConfig:
    """Every width and seed of the FLUX-architecture reference model. Frozen: it is recorded with the weights."""

    seed: int = 0
    image_size: int = 128
    # VAE: 3 levels => vae_scale_factor 4. Flat shapes need little width; sharp edges need the 4x factor.
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers_per_block: int = 1
    vae_latent_channels: int = 4
    vae_norm_groups: int = 8
    # Frozen random text encoders.
    clip_dim: int = 64
    clip_layers: int = 1
    clip_heads: int = 2
    t5_dim: int = 128
    t5_layers: int = 2
    t5_kv_dim: int = 16
    t5_ff_dim: int = 256
    t5_head_offsets: tuple[int, ...] = (-3, -2, -1, 0, 1, 2, 3, 4)
    """One T5 head per entry; head h prefers the word at relative offset ``t5_head_offsets[h]``."""
    t5_offset_bias: float = 8.0
    """Bias added at each head's preferred offset: ~95% of its attention goes there."""
    t5_position_bias_std: float = 1.0
    """Std of the random rest of the relative-position bias (T5's own init: d_model**-0.5, ~0.09 here)."""
    max_sequence_length: int = 32
    """T5 tokens the transformer is trained with (and should be called with): the longest caption (three
    shapes on a gradient) is 31 words + EOS. Padding is not free: at 64 tokens a training step took 30 %
    longer."""
    # FLUX transformer.
    num_layers: int = 2
    num_single_layers: int = 4
    attention_head_dim: int = 32
    num_attention_heads: int = 4
    axes_dims_rope: tuple[int, int, int] = (4, 14, 14)
    # SD3 transformer: joint blocks of the same width as the FLUX model's (heads x head dim above).
    sd3_layers: int = 4
    sd3_qk_norm: str | None = "rms_norm"
    """SD3.5's per-head q/k RMSNorm: keeps attention logits bounded when training from scratch at a high LR."""
    sd3_clip_layers: int = 2
    """SD3 reads CLIP's penultimate hidden state: with 2 layers it is a real layer's output, not the embeddings."""
    # Scheduler.
    shift: float = 3.0

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae_channels) - 1))

    @property
    def image_tokens(self) -> int:
        """Packed tokens of one full-resolution image (2 x 2 latent pixels per token)."""
        side = self.image_size // (self.vae_scale_factor * 2)
        return side * side

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def build_tokenizers(words: tuple[str, ...] = CAPTION_WORDS) -> tuple[CLIPTokenizer, T5Tokenizer]:
    """CLIP and T5 tokenizers over the caption language: every caption word is a single token."""
    return make_clip_tokenizer(words), make_t5_tokenizer(words)


def build_vae(config: ReferenceConfig) -> AutoencoderKL:
    """FLUX-style AutoencoderKL (no quant convs, scalar scale/shift factors set after training)."""
    levels = len(config.vae_channels)
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers_per_block,
        act_fn="silu",
        latent_channels=config.vae_latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.image_size,
        scaling_factor=1.0,
        shift_factor=0.0,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,  # flat shapes need no global mixing; saves time at 32 x 32
    )


def build_flux_transformer(config: ReferenceConfig) -> FluxTransformer2DModel:
    """FLUX.1 transformer (double + single stream blocks, 3-axis RoPE), without guidance embedding."""
    return FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=4 * config.vae_latent_channels,  # 2 x 2 packing
        num_layers=config.num_layers,
        num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.t5_dim,
        pooled_projection_dim=config.clip_dim,
        guidance_embeds=False,  # true CFG (true_cfg_scale + negative_prompt), not distilled guidance
        axes_dims_rope=config.axes_dims_rope,
    )


def build_scheduler(config: ReferenceConfig) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        num_train_timesteps=1000, shift=config.shift, use_dynamic_shifting=False
    )


def shifted_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's time shift ``shift * u / (1 + (shift - 1) * u)``: uniform u gives the sampler's sigmas."""
    return shift * u / (1 + (shift - 1) * u)


def build_sd3_transformer(config: ReferenceConfig) -> SD3Transformer2DModel:
    """SD3 MMDiT (joint blocks, 2 x 2 patches, cropped sin-cos positions) sized like the FLUX model."""
    latent_side = config.image_size // config.vae_scale_factor
    width = config.num_attention_heads * config.attention_head_dim
    return SD3Transformer2DModel(  # type: ignore[no-untyped-call]
        sample_size=latent_side,
        patch_size=2,
        in_channels=config.vae_latent_channels,
        out_channels=config.vae_latent_channels,
        num_layers=config.sd3_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.t5_dim,
        caption_projection_dim=width,
        pooled_projection_dim=2 * config.clip_dim,  # the two CLIP encoders' projected pooled outputs
        # The trained grid is the whole table, as SD3 at its largest trained size; a 64 px image gets the
        # centred half crop, exactly what RALU's first stage gives a 128 px call.
        pos_embed_max_size=latent_side // 2,
        qk_norm=config.sd3_qk_norm,
    )


def _clip_model(
    config: ReferenceConfig, tokenizer: CLIPTokenizer, *, projection: bool = False, layers: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_class(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.clip_dim,
            intermediate_size=2 * config.clip_dim,
            projection_dim=config.clip_dim,
            num_hidden_layers=config.clip_layers if layers is None else layers,
            num_attention_heads=config.clip_heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # pooled output = hidden state at the first EOS
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _t5_model(config: ReferenceConfig, tokenizer: T5Tokenizer) -> T5EncoderModel:
    model = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=config.t5_dim,
            d_kv=config.t5_kv_dim,
            d_ff=config.t5_ff_dim,
            num_layers=config.t5_layers,
            num_heads=len(config.t5_head_offsets),
            relative_attention_num_buckets=32,  # distances 0..7 each get their own bucket per direction
            relative_attention_max_distance=64,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    # Word order reaches the transformer only through these features (its text tokens all sit at RoPE
    # position 0). With T5's flat random init they are nearly a bag of words (colour-swapped captions give
    # features with cosine > 0.997, below bf16 resolution). Untrained T5 heads are made local instead: head
    # h attends mostly to the word at offset o_h, so each layer is a random, order-aware convolution over
    # neighbouring words (as trained T5's local heads are) and two layers see "red circle ... top left".
    encoder: Any = model.encoder
    attention = encoder.block[0].layer[0].SelfAttention  # the only layer with the (shared) bias table
    offsets = torch.tensor(config.t5_head_offsets)
    buckets = attention._relative_position_bucket(
        offsets,
        bidirectional=True,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=attention.relative_attention_max_distance,
    )
    with torch.no_grad():
        weight = attention.relative_attention_bias.weight  # (buckets, heads)
        weight.normal_(0.0, config.t5_position_bias_std)  # runs inside the component's seeded context
        weight[buckets, torch.arange(len(offsets))] += config.t5_offset_bias
    return model


def untrained_components(
    config: ReferenceConfig, *, modules: tuple[str, ...] | None = None, architecture: Architecture = "flux"
) -> dict[str, Any]:
    """Seeded untrained components of the `architecture`'s pipeline (all of them, or only the named
    `modules`), plus its tokenizers and scheduler. Each module's weights depend only on (config,
    architecture, its name): leaving some out changes nothing."""
    order = _ORDERS[architecture]
    modules = order if modules is None else modules
    unknown = set(modules) - set(order)
    if unknown:
        raise ValueError(f"unknown {architecture} modules {sorted(unknown)}; choose from {order}")
    clip_tokenizer, t5_tokenizer = build_tokenizers()
    builders: dict[str, Any]
    if architecture == "flux":
        builders = {
            "transformer": lambda: build_flux_transformer(config),
            "vae": lambda: build_vae(config),
            "text_encoder": lambda: _clip_model(config, clip_tokenizer),
            "text_encoder_2": lambda: _t5_model(config, t5_tokenizer),
        }
        tokenizers = {"tokenizer": clip_tokenizer, "tokenizer_2": t5_tokenizer}
    else:

        def clip() -> CLIPTextModel | CLIPTextModelWithProjection:
            return _clip_model(config, clip_tokenizer, projection=True, layers=config.sd3_clip_layers)

        builders = {
            "transformer": lambda: build_sd3_transformer(config),
            "vae": lambda: build_vae(config),
            "text_encoder": clip,
            "text_encoder_2": clip,  # same shape, its own seed slot
            "text_encoder_3": lambda: _t5_model(config, t5_tokenizer),
        }
        tokenizers = {"tokenizer": clip_tokenizer, "tokenizer_2": clip_tokenizer, "tokenizer_3": t5_tokenizer}
    # Keep every module's seed slot (its index in the order) whatever subset is asked for.
    slots = {name: builders[name] if name in modules else torch.nn.Identity for name in order}
    built = seeded_components(slots, seed=config.seed)
    components = {name: built[name] for name in modules}
    components.update(tokenizers, scheduler=build_scheduler(config))
    return components


def assemble_flux_pipeline(components: dict[str, Any]) -> FluxPipeline:
    """A ``FluxPipeline`` from `untrained_components` output (possibly with trained modules swapped in)."""
    names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")
    missing = [name for name in names if name not in components]
    if missing:
        raise ValueError(f"missing pipeline components: {missing}")
    return FluxPipeline(**{name: components[name] for name in names})  # type: ignore[no-untyped-call]


def assemble_sd3_pipeline(components: dict[str, Any]) -> StableDiffusion3Pipeline:
    """A ``StableDiffusion3Pipeline`` from ``untrained_components(..., architecture="sd3")`` output."""
    names = (
        "transformer",
        "scheduler",
        "vae",
        *(f"{kind}{suffix}" for suffix in ("", "_2", "_3") for kind in ("text_encoder", "tokenizer")),
    )
    missing = [name for name in names if name not in components]
    if missing:
        raise ValueError(f"missing pipeline components: {missing}")
    return StableDiffusion3Pipeline(**{name: components[name] for name in names})  # type: ignore[no-untyped-call]


def _render_range(dataset: ShapesDataset, start: int, stop: int) -> npt.NDArray[np.uint8]:
    return np.stack([dataset[i].image for i in range(start, stop)])


def render_images(dataset: ShapesDataset, *, workers: int = 1, chunk: int = 256) -> npt.NDArray[np.uint8]:
    """All images of `dataset` as one (N, H, W, 3) uint8 array. Rendering is pure Python drawing (~8 ms a
    128 px image), so training renders its set once, in `workers` forked processes; scene i is a pure
    function of (seed, i), so the result does not depend on `workers`."""
    bounds = [(start, min(start + chunk, len(dataset))) for start in range(0, len(dataset), chunk)]
    if workers <= 1 or len(bounds) <= 1:
        parts = [_render_range(dataset, start, stop) for start, stop in bounds]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
            parts = list(pool.map(_render_range, *zip(*[(dataset, a, b) for a, b in bounds], strict=True)))
    return np.concatenate(parts) if parts else np.zeros((0, dataset.size, dataset.size, 3), np.uint8)
