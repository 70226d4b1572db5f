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
from diffusers import FluxPipeline

from ralu_bench.reference import (
    COMPONENT_ORDER,
    ReferenceConfig,
    assemble_flux_pipeline,
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
        "--vae-steps", "2", "--vae-batch-size", "2", "--flux-steps", "3", "--batch-size", "2",
        "--lowres-fraction", "0.5", "--samples", "1", "--sample-steps", "2",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        # One thread: these tensors are tiny, and a second thread only waits on a shared 2-core machine.
        record = _script().main(argv)
        assert record["vae"]["steps"] == 2 and record["flux"]["steps"] == 3
        saved = json.loads((tmp_path / "flux" / "training.json").read_text())
        assert saved["command"].endswith(" ".join(argv)) and saved["seed"] == 0
        assert {"torch", "diffusers"} <= set(saved["versions"]) and saved["flux"]["wall_seconds"] > 0
        assert (tmp_path / "vae" / "config.json").exists() and (tmp_path / "samples-flux.png").exists()
        vae_config = json.loads((tmp_path / "vae" / "config.json").read_text())
        assert vae_config["scaling_factor"] != 1.0 and vae_config["shift_factor"] != 0.0

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        pipe = FluxPipeline.from_pretrained(tmp_path / "flux", torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        plain = _generate(pipe, num_inference_steps=2)
        fast = _generate(accelerate(pipe, "ralu-flux-7x"))
        for images in (plain, fast):
            assert images.shape == (1, 128, 128, 3) and np.isfinite(images).all()
    finally:
        torch.set_num_threads(threads)
