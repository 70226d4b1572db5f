"""The offline random-weight FluxPipeline: determinism, generation, tokenizers, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image

from ralu_flux.testing import (
    VOCABULARY,
    make_clip_tokenizer,
    make_flux_pipeline,
    make_t5_tokenizer,
    tiny_flux_pipeline,
)

FAST: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "max_sequence_length": 16}


@pytest.fixture(scope="module")
def pipe() -> FluxPipeline:
    pipeline = tiny_flux_pipeline(seed=0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipeline: FluxPipeline, prompt: str | list[str], **kwargs: Any) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline(prompt, generator=generator, output_type="np", **{**FAST, **kwargs}).images


def _weights(pipeline: FluxPipeline) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
        for key, value in getattr(pipeline, name).state_dict().items()
    }


def test_same_seed_same_weights_and_global_rng_untouched(pipe: FluxPipeline) -> None:
    rng_before = torch.get_rng_state()
    again = tiny_flux_pipeline(seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    ours, theirs = _weights(pipe), _weights(again)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    other = _weights(tiny_flux_pipeline(seed=1))
    assert not torch.equal(ours["transformer.x_embedder.weight"], other["transformer.x_embedder.weight"])


def test_flux_dev_like_structure(pipe: FluxPipeline) -> None:
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.shift_factor is not None
    assert pipe.transformer.config.guidance_embeds
    assert sum(pipe.transformer.config.axes_dims_rope) == pipe.transformer.config.attention_head_dim
    sched = pipe.scheduler.config
    assert (sched.shift, sched.base_shift, sched.max_shift) == (3.0, 0.5, 1.15)
    assert sched.use_dynamic_shifting
    assert (sched.base_image_seq_len, sched.max_image_seq_len) == (256, 4096)
    assert pipe.tokenizer_max_length == 77


def test_generates_pil_image(pipe: FluxPipeline) -> None:
    image = pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), **FAST).images[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    array = _generate(pipe, "a photo of a cat")
    assert array.shape == (1, 64, 64, 3) and np.isfinite(array).all()
    assert np.array_equal(array, _generate(pipe, "a photo of a cat"))  # generator-seeded => reproducible


@pytest.mark.parametrize("size", [96, 128])
def test_other_sizes(pipe: FluxPipeline, size: int) -> None:
    assert _generate(pipe, "a dog", height=size, width=size).shape == (1, size, size, 3)


def test_batch_of_two_prompts(pipe: FluxPipeline) -> None:
    images = _generate(pipe, ["a red house", "a blue car on the beach"])
    assert images.shape == (2, 64, 64, 3)
    assert not np.array_equal(images[0], images[1])


def test_default_max_sequence_length(pipe: FluxPipeline) -> None:
    prompt_embeds, pooled, text_ids = pipe.encode_prompt("a cat", prompt_2=None)
    assert prompt_embeds.shape == (1, 512, pipe.transformer.config.joint_attention_dim)
    assert pooled.shape == (1, pipe.transformer.config.pooled_projection_dim)
    assert text_ids.shape == (512, 3)


def test_tokenizers_are_pinned_and_handle_unknown_words(pipe: FluxPipeline) -> None:
    clip, t5 = pipe.tokenizer, pipe.tokenizer_2
    # Pinned ids: the vocabularies must not vary between processes (weights are indexed by them).
    assert clip("a photo of a cat").input_ids == [0, 71, 1030, 218, 71, 710, 1]
    assert t5("a photo of a cat").input_ids == [460, 372, 43, 460, 238, 1]
    assert all(len(clip(w, add_special_tokens=False).input_ids) == 1 for w in VOCABULARY)
    assert all(len(t5(w, add_special_tokens=False).input_ids) == 1 for w in VOCABULARY)
    weird = "a qzxv über 🙂 cat"
    for tok in (clip, t5):
        ids = tok(weird).input_ids
        assert tok.unk_token_id in ids and max(ids) < len(tok)
    padded = clip(weird + " word" * 100, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77
    assert make_clip_tokenizer().get_vocab() == clip.get_vocab()
    assert make_t5_tokenizer().get_vocab() == t5.get_vocab()
    assert _generate(pipe, weird).shape == (1, 64, 64, 3)


def test_save_and_load_round_trip_offline(pipe: FluxPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pipe.save_pretrained(tmp_path)
    loaded = FluxPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    prompts = ["a photo of a cat", "an unknown zxqv"]
    assert np.array_equal(_generate(pipe, prompts), _generate(loaded, prompts))


def test_mid_and_dtype_variants() -> None:
    mid = make_flux_pipeline("mid")
    assert mid.transformer.config.num_layers == 4 and mid.transformer.config.num_single_layers == 8
    assert mid.transformer.inner_dim == 256 and mid.vae_scale_factor == 8
    bf16 = make_flux_pipeline("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.transformer.parameters()} == {torch.bfloat16}
    assert bf16.text_encoder_2.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        make_flux_pipeline("huge")  # type: ignore[arg-type]


def test_a_saved_pipeline_loads_in_the_asked_dtype_without_a_deprecation_notice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`dtype_argument` names the keyword the installed diffusers takes (the CLI and the reference models use
    it): the weights load in that dtype, and no FutureWarning says the keyword is deprecated."""
    import warnings

    from ralu_core.pipelines.diffusers_compat import dtype_argument

    make_flux_pipeline("tiny", seed=0).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = FluxPipeline.from_pretrained(tmp_path, **dtype_argument(torch.bfloat16))
    assert pipe.transformer.dtype == torch.bfloat16
