"""flux-dev-random: FLUX.1-dev's full architecture with random weights and random text embeddings of
the real shapes, built where it runs; checked at full size on the meta device, run at a small size."""

from __future__ import annotations

import torch

import ralu_core
import ralu_core.measurement.random_weights as rw
from ralu_core.cli import main
from ralu_flux.flops import load_flux_dev_config
from ralu_flux.random_weights import (
    RandomTextFluxPipeline,
    flux_dev_random,
    flux_schnell_random,
    random_flux_pipeline,
)

FLUX_DEV_TRANSFORMER_PARAMETERS = 11_901_408_320  # FLUX.1-dev's published transformer


def test_flux_dev_random_is_the_full_architecture_with_the_real_text_shapes() -> None:
    pipe = flux_dev_random("meta", torch.bfloat16)
    assert isinstance(pipe, RandomTextFluxPipeline)
    assert sum(p.numel() for p in pipe.transformer.parameters()) == FLUX_DEV_TRANSFORMER_PARAMETERS
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer.device.type == "meta"
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.max_shift == 1.15
    embeds, pooled, text_ids = pipe.encode_prompt(["a cat", "a dog"], num_images_per_prompt=2, device="meta")
    assert embeds.shape == (4, 512, 4096) and pooled.shape == (4, 768) and text_ids.shape == (512, 3)


def test_flux_schnell_random_is_schnells_architecture_and_schedule() -> None:
    pipe = flux_schnell_random("meta", torch.bfloat16)
    parameters = sum(p.numel() for p in pipe.transformer.parameters())
    assert not pipe.transformer.config.guidance_embeds and parameters < FLUX_DEV_TRANSFORMER_PARAMETERS
    assert not pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.shift == 1.0


def _small() -> RandomTextFluxPipeline:
    transformer = load_flux_dev_config("transformer") | {
        "num_layers": 1,
        "num_single_layers": 1,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "axes_dims_rope": [4, 6, 6],
    }
    vae = load_flux_dev_config("vae") | {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}
    return random_flux_pipeline(transformer, vae, load_flux_dev_config("scheduler"), "cpu", torch.float32)


def test_a_batch_of_prompts_gets_each_prompts_own_embeddings_and_ralu_runs_on_them() -> None:
    pipe = _small()
    pipe.set_progress_bar_config(disable=True)
    embeds, pooled, _ = pipe.encode_prompt(["a cat", "a dog"], max_sequence_length=8)
    alone, pooled_alone, _ = pipe.encode_prompt("a dog", max_sequence_length=8)
    assert embeds.shape == (2, 8, 4096) and torch.equal(embeds[1:], alone) and torch.equal(pooled[1:], pooled_alone)
    given, _, _ = pipe.encode_prompt(None, prompt_embeds=alone, pooled_prompt_embeds=pooled_alone)  # type: ignore[arg-type]
    assert given is alone or torch.equal(given, alone)
    fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
    kwargs = {"height": 64, "width": 64, "output_type": "latent", "max_sequence_length": 8}
    batch = fast(["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs).images
    single = fast("a dog", generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1:], single, rtol=1e-4, atol=1e-5)


def test_the_cli_refuses_flux_dev_random_where_its_weights_cannot_fit(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rw, "free_memory", lambda device: 20 * 2**30)
    code = main(["generate", "a cat", "--model", "flux-dev-random", "--device", "cpu", "--dtype", "float32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs 44.6 GiB for its weights in float32 and cpu has 20.0 GiB free" in err, err
    assert "--device cuda --dtype bfloat16" in err


def test_the_random_model_is_listed_with_its_plugin(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["plugins"]) == 0
    assert "model flux-dev-random (flux)" in capsys.readouterr().out
