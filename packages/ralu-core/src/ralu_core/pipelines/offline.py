"""Offline building blocks for random-weight test pipelines: tokenizers and seeded components.

Why this exists: model adapters (FLUX, SD3, ...) must run their pipelines' real prompt encoding in
environments where no tokenizer files can be downloaded. The tokenizers here are built from a small
hand-written vocabulary (no files, no network) and wrapped in the very classes the pipelines use
(``CLIPTokenizer``, and ``T5Tokenizer``, which ``T5TokenizerFast`` aliases since transformers 5), so
``encode_prompt`` runs unchanged. Ids are pure functions of :data:`VOCABULARY` and identical in every
process, so random-weight text encoders indexed by them stay reproducible. `seeded_components`
initialises each model component from its own seed without touching the caller's RNG. Shared here so
that every adapter package can use them without depending on another adapter.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import transformers
from transformers import CLIPTokenizer, T5Tokenizer

__all__ = [
    "CLIP_MAX_LENGTH",
    "GEMMA_MAX_LENGTH",
    "T5_MAX_LENGTH",
    "VOCABULARY",
    "make_clip_tokenizer",
    "make_gemma_tokenizer",
    "make_mistral_tokenizer",
    "make_qwen2_tokenizer",
    "make_t5_tokenizer",
    "seeded",
    "seeded_components",
    "small_clip",
    "small_t5",
    "small_vae",
]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for module initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seeded_components(
    builders: dict[str, Callable[[], Any]], *, seed: int, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Build each component from its own seed (``seed * 16 + index``, in `builders` order), in float32,
    then switch to eval mode and cast to `dtype`: the same seed gives bit-identical weights."""
    components: dict[str, Any] = {}
    for index, (name, build) in enumerate(builders.items()):
        with seeded(seed * 16 + index):
            module = build()
        module.eval()
        if dtype != torch.float32:
            # nn.Module.to: diffusers' ModelMixin.to warns about fp32-pinned modules even when there are none.
            torch.nn.Module.to(module, dtype=dtype)
        components[name] = module
    return components


# --- small components of the real classes (test and demo pipelines) -----------------------------


def small_vae(
    channels: Sequence[int],
    groups: int,
    *,
    scaling_factor: float,
    shift_factor: float | None,
    sample_size: int,
    latent_channels: int = 16,
) -> Any:
    """A narrow ``AutoencoderKL`` (factor 8 with four levels): 16 latent channels as FLUX's and SD3's, 4 as
    Stable Diffusion 1.x / XL's."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=True,
        use_quant_conv=shift_factor is None,  # SD 1.x / XL VAEs have the quant convs, FLUX and SD3 dropped them
        use_post_quant_conv=shift_factor is None,
        mid_block_add_attention=True,
    )


def small_t5(tokenizer: T5Tokenizer, width: int, heads: int, head_dim: int) -> Any:
    """A one-layer T5 v1.1 encoder (gated GELU, as FLUX's and SD3's T5-XXL) over `tokenizer`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=head_dim,
        d_ff=2 * width,
        num_layers=1,
        num_heads=heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def small_clip(
    model_cls: Any,
    tokenizer: CLIPTokenizer,
    *,
    hidden: int,
    projection: int,
    heads: int,
    layers: int,
    ffn: int,
    act: str,
) -> Any:
    """A CLIP text tower of class `model_cls` (``CLIPTextModel`` or ``CLIPTextModelWithProjection``) whose
    pooled output is the hidden state at the first EOS, as in the real checkpoints."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        projection_dim=projection,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model_cls(config)


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
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512


def _require_tokenizers_backend() -> None:
    """The tokenizers are built with transformers 5's constructors (vocabulary passed in, no files)."""
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise RuntimeError(
            "ralu_core.pipelines.offline needs transformers>=5 for its offline tokenizers; "
            f"found {transformers.__version__}"
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


def _whole_word_merges(vocab: dict[str, int], words: Sequence[list[str]]) -> list[tuple[str, str]]:
    """BPE merges (appended to `vocab`'s pieces) that make each word, given as its initial symbols, one token.

    Merges are only ever appended, and each word is first segmented with the merges so far, then its
    pieces are chained left to right. Appending cannot change how earlier words encode (an earlier merge
    always outranks a new one), so every word stays a single token. Pure Python on ordered containers,
    hence identical in every process (``tokenizers``' BPE trainer is not: its ids vary run to run).
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for symbols in words:
        while len(pieces := _bpe_segment(symbols, ranks)) > 1:
            head = pieces[0]
            for piece in pieces[1:]:
                if (head, piece) not in ranks:
                    ranks[(head, piece)] = len(merges)
                    merges.append((head, piece))
                head += piece
                vocab.setdefault(head, len(vocab))
    return merges


def _clip_vocab_and_merges(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE vocabulary in which every word of `words` is one ``word</w>`` token."""
    alphabet = list(dict.fromkeys(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = [_CLIP_BOS, _CLIP_EOS, _CLIP_UNK, *alphabet, *(c + "</w>" for c in alphabet)]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _whole_word_merges(vocab, [[*word[:-1], word[-1] + "</w>"] for word in words])
    return vocab, merges


def make_clip_tokenizer(words: Sequence[str] | None = None) -> CLIPTokenizer:
    """A CLIP-style byte-level BPE tokenizer over `words` (default :data:`VOCABULARY`), built offline and
    deterministically.

    Every vocabulary word is a single ``word</w>`` token (a model trained on a closed caption language
    passes its own `words`, so that its embedding table has no unused rows); other ASCII words split into
    known pieces or characters, and anything else (non-ASCII) maps to ``<|unk|>`` -- kept distinct from
    ``<|endoftext|>``, the padding/EOS token CLIP pools on.
    """
    _require_tokenizers_backend()
    vocab, merges = _clip_vocab_and_merges(VOCABULARY if words is None else words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # (left, right) pairs, as tokenizers' BPE takes them
        unk_token=_CLIP_UNK,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
        model_max_length=CLIP_MAX_LENGTH,
    )


def make_t5_tokenizer(words: Sequence[str] | None = None) -> T5Tokenizer:
    """A T5-style Unigram tokenizer over `words` (default :data:`VOCABULARY`), built offline.

    Ids 0/1/2 are ``<pad>``/``</s>``/``<unk>`` as in T5. Whole words ("▁word") outscore any split, so
    vocabulary words are single tokens; other words split into characters and characters outside ASCII
    letters/digits/punctuation map to ``<unk>``. No sentinel (``<extra_id_*>``) tokens.
    """
    _require_tokenizers_backend()
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    pieces += [("\u2581" + word, -6.0) for word in (VOCABULARY if words is None else dict.fromkeys(words))]
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("\u2581" + char, -9.0), (char, -10.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


GEMMA_MAX_LENGTH = 256


def make_gemma_tokenizer(words: Sequence[str] | None = None) -> Any:
    """A Gemma-style BPE tokenizer over `words` (default :data:`VOCABULARY`), built offline and
    deterministically, in the class LuminaPipeline uses (``GemmaTokenizer``).

    Ids 0-3 are ``<pad>``, ``<eos>``, ``<bos>``, ``<unk>`` as in Gemma; every vocabulary word is one token
    both with the leading ``▁`` (Gemma's space) and without (the first word of a prompt); other ASCII
    words split into pieces or characters. It adds ``<bos>``, as Gemma's does: an empty negative prompt then
    still has one attended token (LuminaPipeline pools the text by its mask).
    """
    _require_tokenizers_backend()
    from transformers import GemmaTokenizer

    alphabet = list(dict.fromkeys("\u2581" + string.ascii_letters + string.digits + string.punctuation))
    vocab = {token: index for index, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *alphabet])}
    chosen = VOCABULARY if words is None else tuple(dict.fromkeys(words))
    merges = _whole_word_merges(vocab, [list(piece) for word in chosen for piece in ("\u2581" + word, word)])
    pairs: Any = merges  # (left, right) pairs, as tokenizers' BPE takes them
    return GemmaTokenizer(vocab=vocab, merges=pairs, model_max_length=GEMMA_MAX_LENGTH, add_bos_token=True)


def make_qwen2_tokenizer(words: Sequence[str] | None = None) -> Any:
    """A Qwen2-style byte-level BPE tokenizer over `words` (default :data:`VOCABULARY`), built offline and
    deterministically, in the class QwenImagePipeline uses (``Qwen2Tokenizer``, with Qwen2's own pre-tokenizer,
    NFC normaliser and byte-level decoder).

    Ids 0-255 are GPT-2's byte alphabet in its vocabulary order (every string encodes, nothing is unknown), then
    ``<|endoftext|>`` (pad, EOS and unknown, as Qwen2's), ``<|im_start|>`` and ``<|im_end|>``, then the merged
    tokens. Every vocabulary word is one token both with the leading ``Ġ`` (byte-level space) and without, and so
    is every word of QwenImagePipeline's chat template: its system part then spans the 34 tokens that the pipeline
    drops (``prompt_template_encode_start_idx``), as with Qwen2.5-VL's tokenizer, and the prompt's own tokens all
    survive the drop.
    """
    _require_tokenizers_backend()
    from transformers import Qwen2Tokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    table = {byte: chr(byte) for byte in printable} | {byte: chr(256 + index) for index, byte in enumerate(others)}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: index for index, token in enumerate([*(table[byte] for byte in printable + others), *specials])}
    template = (  # the words of QwenImagePipeline's chat template (its system prompt and roles)
        "system user assistant Describe describe image detailing color shape size texture quantity text spatial"
        " relationships objects background"
    )
    chosen = dict.fromkeys([*template.split(), *(VOCABULARY if words is None else words)])
    spelled = [[table[byte] for byte in piece.encode()] for word in chosen for piece in (" " + word, word)]
    pairs: Any = _whole_word_merges(vocab, spelled)  # (left, right) pairs, as tokenizers' BPE takes them
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=pairs,
        unk_token=specials[0],
        eos_token=specials[0],
        pad_token=specials[0],
        extra_special_tokens=specials[1:],
        model_max_length=32768,
    )


def make_mistral_tokenizer(words: Sequence[str] | None = None) -> Any:
    """A Tekken-style byte-level BPE tokenizer over `words` (default :data:`VOCABULARY`), built offline and
    deterministically, with the chat template Flux2Pipeline applies (Mistral Small 3.1's, text and image blocks).

    Flux2Pipeline's ``tokenizer`` is a ``PixtralProcessor`` in the real checkpoint, but transformers builds that
    class only with torchvision installed; the pipeline's prompt encoding calls nothing but ``apply_chat_template``
    (batched, ``padding="max_length"``, truncation), which the tokenizer itself provides, so this returns the
    tokenizer (a ``TokenizersBackend``, the class transformers 5 loads Mistral's ``tokenizer.json`` into without
    mistral-common). Caption upsampling, which decodes through ``tokenizer.tokenizer``, needs the processor.

    Ids 0-19 are Mistral's control tokens at their Tekken ids (``<unk>``, ``<s>``, ``</s>``, ``[INST]``,
    ``[/INST]``, ..., ``[IMG]`` 10, ``<pad>`` 11, ..., ``[SYSTEM_PROMPT]`` 17, ``[/SYSTEM_PROMPT]`` 18), then the 256
    bytes in byte order (every string encodes, nothing is unknown), then the merged tokens; the pre-tokenizer is
    Tekken's split (the corrected regex of transformers' ``fix_mistral_regex``) followed by GPT-2's byte mapping.
    Every vocabulary word is one token both with the leading ``Ġ`` (byte-level space) and without, and so is every
    word of FLUX.2's system message, whose chat-template part is then 31 tokens (``<s>`` to ``[INST]``). It pads on
    the left, as Llama-class tokenizers (Mistral's names one) do; the template never falls back to Mistral's
    date-stamped default system message, so its output is a pure function of the messages.
    """
    _require_tokenizers_backend()
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import TokenizersBackend

    specials = [
        *("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]"),
        *("[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]"),
        *("[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"),
    ]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    table = {byte: chr(byte) for byte in printable} | {byte: chr(256 + index) for index, byte in enumerate(others)}
    vocab = {token: index for index, token in enumerate([*specials, *(table[byte] for byte in range(256))])}
    template = (  # the words of FLUX.2's system message (diffusers' flux2 SYSTEM_MESSAGE)
        "You are an AI that reasons about image descriptions give structured responses focusing on object"
        " relationships attribution and actions without speculation"
    )
    chosen = dict.fromkeys([*template.split(), *(VOCABULARY if words is None else words)])
    spelled = [[table[byte] for byte in piece.encode()] for word in chosen for piece in (" " + word, word)]
    pairs: Any = _whole_word_merges(vocab, spelled)  # (left, right) pairs, as tokenizers' BPE takes them
    backend = Tokenizer(BPE(vocab, pairs, fuse_unk=False, ignore_merges=True))
    split = Regex(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(split, behavior="isolated"), byte_level])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = TokenizersBackend(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=131072,
    )
    text = "(message['content'] if message['content'] is string else message['content'][0]['text'])"
    tokenizer.chat_template = (
        "{{- bos_token }}"
        "{%- set loop_messages = messages %}"
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set message = messages[0] %}{{- '[SYSTEM_PROMPT]' + " + text + " + '[/SYSTEM_PROMPT]' }}"
        "{%- set loop_messages = messages[1:] %}"
        "{%- endif %}"
        "{%- for message in loop_messages %}"
        "{%- if message['role'] == 'user' and message['content'] is string %}"
        "{{- '[INST]' + message['content'] + '[/INST]' }}"
        "{%- elif message['role'] == 'user' %}"
        "{{- '[INST]' }}"
        "{%- for block in message['content'] %}"
        "{%- if block['type'] == 'text' %}{{- block['text'] }}"
        "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}"
        "{%- else %}{{- raise_exception('Only text and image blocks are supported in message content!') }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{{- '[/INST]' }}"
        "{%- elif message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + " + text + " + '[/SYSTEM_PROMPT]' }}"
        "{%- elif message['role'] == 'assistant' %}{{- " + text + " + eos_token }}"
        "{%- else %}{{- raise_exception('Only user, system and assistant roles are supported!') }}"
        "{%- endif %}"
        "{%- endfor %}"
    )
    return tokenizer
