"""flux2-dev-random: FLUX.2-dev's full architecture with random weights and random text embeddings, built where it
runs; checked at full size on the meta device, run at a small size."""

from __future__ import annotations

import torch

import ralu_core
from ralu_flux2.flops_profile import load_flux2_dev_config
from ralu_flux2.random_weights import RandomTextFlux2Pipeline, flux2_dev_random, random_flux2_pipeline

FLUX2_DEV_TRANSFORMER_PARAMETERS = 32_223_281_152


def test_flux2_dev_random_is_the_full_architecture_with_the_real_text_shapes() -> None:
    pipe = flux2_dev_random("meta", torch.bfloat16)
    assert isinstance(pipe, RandomTextFlux2Pipeline) and pipe.text_encoder is None
    assert sum(p.numel() for p in pipe.transformer.parameters()) == FLUX2_DEV_TRANSFORMER_PARAMETERS
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer.device.type == "meta"
    embeds, text_ids = pipe.encode_prompt(["a cat", "a dog"], num_images_per_prompt=2, device="meta")
    assert embeds.shape == (4, 512, 15360) and text_ids.shape == (4, 512, 4)


def test_a_batch_of_prompts_gets_each_prompts_own_embeddings_and_ralu_runs_on_them() -> None:
    transformer = load_flux2_dev_config("transformer") | {
        "num_layers": 1,
        "num_single_layers": 1,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "axes_dims_rope": [4, 4, 4, 4],
        "joint_attention_dim": 32,
    }
    vae = load_flux2_dev_config("vae") | {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}
    pipe = random_flux2_pipeline(transformer, vae, load_flux2_dev_config("scheduler"), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    embeds, _ = pipe.encode_prompt(["a cat", "a dog"], max_sequence_length=8)
    alone, _ = pipe.encode_prompt("a dog", max_sequence_length=8)
    assert embeds.shape == (2, 8, 32) and torch.equal(embeds[1:], alone)
    fast = ralu_core.accelerate(pipe, "ralu-flux2-4x")
    kwargs = {"height": 64, "width": 64, "output_type": "latent", "max_sequence_length": 8}
    batch = fast(prompt=["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs)
    single = fast(prompt="a dog", generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.isfinite(batch.images).all()
    torch.testing.assert_close(batch.images[1:], single, rtol=1e-4, atol=1e-5)
