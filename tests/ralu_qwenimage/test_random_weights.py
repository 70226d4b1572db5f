"""qwen-image-random: Qwen-Image's full architecture with random weights and random text embeddings, built where
it runs; checked at full size on the meta device, run at a small size."""

from __future__ import annotations

import torch

import ralu_core
from ralu_qwenimage.flops_profile import TEXT_TOKENS, load_qwen_image_config
from ralu_qwenimage.random_weights import RandomTextQwenImagePipeline, qwen_image_random, random_qwenimage_pipeline

QWEN_IMAGE_TRANSFORMER_PARAMETERS = 20_430_401_088  # Qwen-Image's published 20.43B


def test_qwen_image_random_is_the_full_architecture_with_the_text_shape_counted() -> None:
    pipe = qwen_image_random("meta", torch.bfloat16)
    assert isinstance(pipe, RandomTextQwenImagePipeline) and pipe.text_encoder is None
    assert sum(p.numel() for p in pipe.transformer.parameters()) == QWEN_IMAGE_TRANSFORMER_PARAMETERS
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer.device.type == "meta"
    assert pipe.scheduler.config.shift_terminal == 0.02 and pipe.vae_scale_factor == 8
    embeds, mask = pipe.encode_prompt(["a cat", "a dog"], num_images_per_prompt=2, device="meta")
    assert embeds.shape == (4, TEXT_TOKENS, 3584) and mask is None


def test_a_batch_of_prompts_gets_each_prompts_own_embeddings_and_ralu_runs_on_them() -> None:
    transformer = load_qwen_image_config("transformer") | {
        "num_layers": 1,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "axes_dims_rope": [4, 6, 6],
        "joint_attention_dim": 32,
    }
    vae = load_qwen_image_config("vae") | {"base_dim": 8, "num_res_blocks": 1}
    pipe = random_qwenimage_pipeline(transformer, vae, load_qwen_image_config("scheduler"), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    embeds, _ = pipe.encode_prompt(["a cat", "a dog"])
    alone, _ = pipe.encode_prompt("a dog")
    assert embeds.shape == (2, TEXT_TOKENS, 32) and torch.equal(embeds[1:], alone)
    fast = ralu_core.accelerate(pipe, "ralu-qwenimage-4x")
    kwargs = {"height": 64, "width": 64, "output_type": "latent", "negative_prompt": " ", "true_cfg_scale": 4.0}
    batch = fast(["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs).images
    single = fast("a dog", generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1:], single, rtol=1e-4, atol=1e-5)
