"""The reference models' components and their training script, end to end with tiny budgets."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from ralu_bench.reference import (
    COMPONENT_ORDER,
    ReferenceConfig,
    assemble_flux_pipeline,
    assemble_sd3_pipeline,
    build_tokenizers,
    shifted_sigma,
    untrained_components,
)
from ralu_bench.shapes import CAPTION_WORDS, ShapesDataset
from ralu_core import accelerate

SCRIPT = Path(__file__).resolve().parents[2] / "packages" / "ralu-bench" / "scripts" / "train_reference.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_caption_word_is_one_token() -> None:
    clip, t5 = build_tokenizers()
    for tokenizer in (clip, t5):
        ids = [tokenizer(word, add_special_tokens=False).input_ids for word in CAPTION_WORDS]
        assert all(len(i) == 1 for i in ids)
        assert len({i[0] for i in ids}) == len(CAPTION_WORDS)
        assert tokenizer.unk_token_id not in {i[0] for i in ids}
    caption = ShapesDataset.split("train", length=1)[0].caption
    assert len(t5(caption, add_special_tokens=False).input_ids) == len(caption.split())


def test_untrained_pipeline_structure_and_seeds() -> None:
    config = ReferenceConfig()
    pipe = assemble_flux_pipeline(untrained_components(config))
    assert pipe.vae_scale_factor == 4 and config.image_tokens == 256
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
    assert not pipe.transformer.config.guidance_embeds
    assert sum(pipe.transformer.config.axes_dims_rope) == pipe.transformer.config.attention_head_dim
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert pipe.scheduler.config.shift == 3.0 and not pipe.scheduler.config.use_dynamic_shifting
    # A module's weights depend only on the config and its name, not on which others are built.
    alone = untrained_components(config, modules=("text_encoder_2",))["text_encoder_2"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(alone.state_dict().values(), pipe.text_encoder_2.state_dict().values(), strict=True)
    )
    other = untrained_components(ReferenceConfig(seed=1), modules=("vae",))["vae"]
    assert not torch.equal(other.encoder.conv_in.weight, pipe.vae.encoder.conv_in.weight)
    with pytest.raises(ValueError):
        untrained_components(config, modules=("unet",))
    assert set(COMPONENT_ORDER) <= set(untrained_components(config))


def test_untrained_sd3_pipeline_structure() -> None:
    config = ReferenceConfig()
    pipe = assemble_sd3_pipeline(untrained_components(config, architecture="sd3"))
    transformer = pipe.transformer.config
    assert pipe.vae_scale_factor == 4 and transformer.patch_size == 2 and transformer.in_channels == 4
    # 128 px -> a 16 x 16 patch grid that is the whole position table; 64 px gets its centred half.
    assert transformer.pos_embed_max_size == config.image_size // pipe.vae_scale_factor // 2 == 16
    assert transformer.pooled_projection_dim == 2 * pipe.text_encoder.config.projection_dim
    assert transformer.joint_attention_dim == pipe.text_encoder_3.config.d_model >= 2 * config.clip_dim
    assert pipe.text_encoder.config.num_hidden_layers == 2  # SD3 reads the penultimate hidden state
    # The two CLIP encoders have the same shape but their own seeds.
    assert not torch.equal(pipe.text_encoder.text_projection.weight, pipe.text_encoder_2.text_projection.weight)
    embeds, _, pooled, _ = pipe.encode_prompt("a red circle", None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=config.max_sequence_length)  # fmt: skip
    assert embeds.shape == (1, 77 + config.max_sequence_length, config.t5_dim) and pooled.shape == (1, 128)
    with pytest.raises(ValueError, match="unknown sd3 modules"):
        untrained_components(config, modules=("unet",), architecture="sd3")


def test_shifted_sigma_is_the_schedulers_shift() -> None:
    u = torch.linspace(0, 1, 11)
    assert torch.allclose(shifted_sigma(u, 3.0), 3 * u / (1 + 2 * u))
    assert shifted_sigma(torch.tensor([0.0, 1.0]), 3.0).tolist() == [0.0, 1.0]


def _generate(pipe: Any, **kwargs: Any) -> np.ndarray:
    return pipe(
        "a red circle at the top left on a white background",
        negative_prompt="",
        true_cfg_scale=2.0,
        height=128,
        width=128,
        max_sequence_length=ReferenceConfig().max_sequence_length,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    ).images


def test_train_script_end_to_end_and_offline_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [
        "--stage", "all", "--out", str(tmp_path), "--seed", "0", "--train-size", "8", "--workers", "1",
        "--threads", "1", "--log-every", "1", "--stats-images", "8", "--eval-images", "2",
        "--vae-steps", "2", "--vae-batch-size", "2", "--flux-steps", "3", "--sd3-steps", "2", "--batch-size", "2",
        "--lowres-fraction", "0.5", "--samples", "1", "--sample-steps", "2", "--device", "cpu",
        "--attention-heads", "2",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        # One thread: these tensors are tiny, and a second thread only waits on a shared 2-core machine.
        record = _script().main(argv)
        assert record["vae"]["steps"] == 2 and record["flux"]["steps"] == 3 and record["sd3"]["steps"] == 2
        saved = json.loads((tmp_path / "flux" / "training.json").read_text())
        assert saved["command"].endswith(" ".join(argv)) and saved["seed"] == 0
        assert {"torch", "diffusers"} <= set(saved["versions"]) and saved["flux"]["wall_seconds"] > 0
        assert saved["machine"]["device"] == "cpu" and saved["machine"]["accelerator"] is None
        assert (tmp_path / "vae" / "config.json").exists() and (tmp_path / "samples-flux.png").exists()
        vae_config = json.loads((tmp_path / "vae" / "config.json").read_text())
        assert vae_config["scaling_factor"] != 1.0 and vae_config["shift_factor"] != 0.0

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        pipe = FluxPipeline.from_pretrained(tmp_path / "flux", torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.transformer.config.num_attention_heads == 2 and saved["config"]["num_attention_heads"] == 2
        plain = _generate(pipe, num_inference_steps=2)
        fast = _generate(accelerate(pipe, "ralu-flux-7x"))
        for images in (plain, fast):
            assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()

        sd3_record = json.loads((tmp_path / "sd3" / "training.json").read_text())
        assert "flux" not in sd3_record and sd3_record["recommended_call"]["guidance_scale"] == 4.0
        sd3 = StableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", torch_dtype=torch.float32)
        sd3.set_progress_bar_config(disable=True)
        assert sd3.vae.config.scaling_factor == pipe.vae.config.scaling_factor  # the shared VAE
        call = {k: v for k, v in sd3_record["recommended_call"].items() if k != "num_inference_steps"}
        image = accelerate(sd3, "ralu-sd3-3x")("a red circle", output_type="np", **call).images
        assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()
    finally:
        torch.set_num_threads(threads)
