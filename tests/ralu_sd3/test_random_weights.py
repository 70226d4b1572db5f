"""sd3-medium-random and sd35-large-random: the published SD3 architectures with random weights and random
text embeddings of the real shapes; checked at full size on the meta device, run at a small size."""

from __future__ import annotations

import pytest
import torch

import ralu_core
from ralu_core.cli import main
from ralu_sd3.flops import load_sd3_config
from ralu_sd3.plugin import random_weight_models
from ralu_sd3.random_weights import RandomTextSD3Pipeline, random_sd3_pipeline

PARAMETERS = {"sd3-medium-random": 2_028_328_000, "sd35-large-random": 8_056_627_520}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_the_full_architectures_with_the_real_text_shapes(name: str) -> None:
    model = next(m for m in random_weight_models() if m.name == name)
    assert model.loads_on_device and model.call_defaults["height"] == 1024
    pipe = model.load("meta", torch.bfloat16)
    assert isinstance(pipe, RandomTextSD3Pipeline)
    assert sum(p.numel() for p in pipe.transformer.parameters()) == PARAMETERS[name]
    assert pipe.transformer.dtype == torch.bfloat16
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a cat", device="meta", num_images_per_prompt=2)
    assert embeds.shape == negative.shape == (2, 77 + 256, 4096)
    assert pooled.shape == negative_pooled.shape == (2, 2048)


def _small() -> RandomTextSD3Pipeline:
    transformer = load_sd3_config("sd3-medium", "transformer") | {
        "num_layers": 2,
        "num_attention_heads": 2,
        "caption_projection_dim": 128,
    }
    vae = load_sd3_config("sd3-medium", "vae") | {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}
    return random_sd3_pipeline(transformer, vae, load_sd3_config("sd3-medium", "scheduler"), "cpu", torch.float32)


def test_prompts_and_negative_prompts_get_their_own_embeddings_and_ralu_runs_on_them() -> None:
    pipe = _small()
    pipe.set_progress_bar_config(disable=True)
    embeds, negative, pooled, _ = pipe.encode_prompt(["a cat", "a dog"], max_sequence_length=8)
    alone, _, pooled_alone, _ = pipe.encode_prompt("a dog", max_sequence_length=8)
    assert embeds.shape == (2, 85, 4096) and torch.equal(embeds[1:], alone) and torch.equal(pooled[1:], pooled_alone)
    assert negative is not None and torch.equal(negative[0], negative[1]) and not torch.equal(negative[0], embeds[0])
    other, _, _, _ = pipe.encode_prompt("a dog", max_sequence_length=8, negative_prompt="blurry")
    _, uncond, _, _ = pipe.encode_prompt("a dog", max_sequence_length=8, negative_prompt="blurry")
    assert torch.equal(other, alone) and not torch.equal(uncond, negative[:1])
    assert pipe.encode_prompt("a dog", do_classifier_free_guidance=False)[1] is None
    fast = ralu_core.accelerate(pipe, "ralu-sd3-3x")
    kwargs = {"height": 64, "width": 64, "output_type": "latent", "max_sequence_length": 8}
    batch = fast(["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs).images
    single = fast("a dog", generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1:], single, rtol=1e-4, atol=1e-5)


def test_the_random_models_are_listed_with_their_plugin(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "model sd3-medium-random (sd3)" in out and "model sd35-large-random (sd3)" in out
