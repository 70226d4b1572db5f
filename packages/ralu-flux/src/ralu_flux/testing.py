"""Offline, random-weight ``diffusers.FluxPipeline`` instances for tests and CPU benchmarks.

Why this exists: ralu's FLUX adapter must be exercised end to end (prompt encoding, packing, the
flow-matching scheduler, the transformer, VAE decoding, ``save_pretrained``/``from_pretrained``) in
environments where no model weights or tokenizer files can be downloaded. Every component is therefore
built here from an in-code config with deterministic random weights (``seed`` -> bit-identical
weights), and the two tokenizers are built from a small hand-written vocabulary (no files) and wrapped
in the very classes FLUX.1 uses (``CLIPTokenizer``, and ``T5Tokenizer``, which ``T5TokenizerFast``
aliases since transformers 5), so ``FluxPipeline.encode_prompt`` runs unchanged.

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

import itertools
import string
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import attrs
import torch
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

__all__ = [
    "VOCABULARY",
    "make_clip_tokenizer",
    "make_flux_pipeline",
    "make_t5_tokenizer",
    "tiny_flux_pipeline",
]

# A few hundred common English words (plus typical prompt words). Anything else is split into
# characters; characters outside ASCII letters/digits/punctuation become the unknown token.
_WORDS = """
    a an the this that these those some any every each no all both few many much more most other
    and or but if then so because while when where why how what which who whose whom as than
    of in on at to from by with without about above below under over into onto through between
    behind beside near far inside outside around across along against among after before during
    i you he she it we they me him her us them my your his its our their mine yours
    is are was were be been being am do does did done have has had will would can could
    should may might must shall not very too also just only even still again never always often
    one two three four five six seven eight nine ten hundred thousand first second last next
    new old young big small large little tall short long wide narrow high low deep bright dark
    light heavy soft hard hot cold warm cool wet dry clean dirty quiet loud fast slow happy sad
    beautiful pretty ugly good bad great best better worse strange simple calm wild golden silver
    red orange yellow green blue purple pink brown black white gray grey colorful shiny glowing
    man woman boy girl child children person people baby friend family king queen knight wizard
    robot astronaut soldier farmer doctor artist chef pirate princess warrior monk
    cat cats dog dogs bird birds fish horse cow sheep pig lion tiger bear wolf fox rabbit mouse
    deer elephant monkey dragon owl eagle duck frog snake butterfly bee whale dolphin shark
    tree trees flower flowers grass leaf leaves forest garden field mountain mountains hill valley
    river lake sea ocean beach island desert sky cloud clouds rain snow storm sun moon star stars
    planet space galaxy fire water ice stone rock sand wood metal glass gold light shadow
    house home room door window wall roof floor table chair bed lamp book books cup bottle box
    city town street road bridge tower castle church temple village building car train boat ship
    plane bicycle station market shop cafe restaurant kitchen library museum park school
    food bread apple apples banana cake coffee tea pizza soup fruit vegetables cheese
    photo photograph picture image painting drawing sketch portrait landscape illustration
    render art style detailed realistic photorealistic cinematic lighting sharp focus blur
    background foreground closeup view scene shot lens camera film color colors texture pattern
    oil watercolor digital anime cartoon fantasy futuristic ancient medieval modern vintage
    morning evening night sunset sunrise day summer winter spring autumn fall
    sitting standing walking running flying swimming eating reading holding wearing looking
    playing sleeping smiling dancing riding jumping
    hat dress shirt coat shoes glasses crown sword shield sign text word words hello world
"""
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(_WORDS.split()))

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_CLIP_UNK = "<|unk|>"
_CLIP_MAX_LENGTH = 77
_T5_MAX_LENGTH = 512


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


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for module init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _require_tokenizers_backend() -> None:
    """The tokenizers are built with transformers 5's constructors (vocabulary passed in, no files)."""
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise RuntimeError(
            f"ralu_flux.testing needs transformers>=5 to build its offline tokenizers; found {transformers.__version__}"
        )


def _bpe_segment(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank (lowest first, all occurrences left to right) -- the encoding rule."""
    while len(symbols) > 1:
        candidates = [ranks.get(pair) for pair in itertools.pairwise(symbols)]
        best = min((rank for rank in candidates if rank is not None), default=None)
        if best is None:
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and ranks.get((symbols[i], symbols[i + 1])) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE vocabulary in which every word of :data:`VOCABULARY` is one ``word</w>`` token.

    Merges are only ever appended, and each word is first segmented with the merges so far, then its
    pieces are chained left to right. Appending cannot change how earlier words encode (an earlier merge
    always outranks a new one), so every word stays a single token. Pure Python on ordered containers,
    hence identical in every process (``tokenizers``' BPE trainer is not: its ids vary run to run).
    """
    alphabet = list(dict.fromkeys(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = [_CLIP_BOS, _CLIP_EOS, _CLIP_UNK, *alphabet, *(c + "</w>" for c in alphabet)]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in VOCABULARY:
        while len(pieces := _bpe_segment([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            head = pieces[0]
            for piece in pieces[1:]:
                if (head, piece) not in ranks:
                    ranks[(head, piece)] = len(merges)
                    merges.append((head, piece))
                head += piece
                vocab.setdefault(head, len(vocab))
    return vocab, merges


def make_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP-style byte-level BPE tokenizer over :data:`VOCABULARY`, built offline and deterministically.

    Every vocabulary word is a single ``word</w>`` token; other ASCII words split into known pieces or
    characters, and anything else (non-ASCII) maps to ``<|unk|>`` -- kept distinct from
    ``<|endoftext|>``, the padding/EOS token CLIP pools on.
    """
    _require_tokenizers_backend()
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # (left, right) pairs, as tokenizers' BPE takes them
        unk_token=_CLIP_UNK,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=_CLIP_MAX_LENGTH,
    )


def make_t5_tokenizer() -> T5Tokenizer:
    """A T5-style Unigram tokenizer over :data:`VOCABULARY`, built offline.

    Ids 0/1/2 are ``<pad>``/``</s>``/``<unk>`` as in T5. Whole words ("▁word") outscore any split, so
    vocabulary words are single tokens; other words split into characters and characters outside ASCII
    letters/digits/punctuation map to ``<unk>``. No sentinel (``<extra_id_*>``) tokens.
    """
    _require_tokenizers_backend()
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    pieces += [("\u2581" + word, -6.0) for word in VOCABULARY]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("\u2581" + char, -9.0), (char, -10.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_T5_MAX_LENGTH)


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
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        act_fn="silu",
        latent_channels=16,
        norm_num_groups=spec.vae_groups,
        sample_size=256,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


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
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.clip_dim,
        intermediate_size=2 * spec.clip_dim,
        projection_dim=spec.clip_dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooled output = hidden state at the first EOS
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _t5_model(spec: _SizeSpec, tokenizer: T5Tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=spec.text_dim,
        d_kv=16,
        d_ff=2 * spec.text_dim,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's T5-XXL
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


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

    def component_seed(index: int) -> int:
        return seed * 16 + index

    modules: dict[str, Any] = {}
    with _seeded(component_seed(0)):
        modules["transformer"] = _transformer(spec)
    with _seeded(component_seed(1)):
        modules["vae"] = _vae(spec)
    with _seeded(component_seed(2)):
        modules["text_encoder"] = _clip_model(spec, clip_tokenizer)
    with _seeded(component_seed(3)):
        modules["text_encoder_2"] = _t5_model(spec, t5_tokenizer)
    for module in modules.values():
        module.eval()
        if dtype != torch.float32:
            # nn.Module.to: diffusers' ModelMixin.to warns about fp32-pinned modules even when there are none.
            torch.nn.Module.to(module, dtype=dtype)
    return FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=_scheduler(),
        tokenizer=clip_tokenizer,
        tokenizer_2=t5_tokenizer,
        **modules,
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """``make_flux_pipeline("tiny", seed=seed)`` -- the unit-test pipeline."""
    return make_flux_pipeline("tiny", seed=seed)
