"""The Qwen-Image adapter against the conformance suite every adapter runs (`ralu_core.testing.conformance`),
with true CFG on (a negative prompt), as Qwen-Image is run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ralu_core.testing.conformance import AdapterConformance
from ralu_qwenimage.testing import make_qwenimage_pipeline


class TestQwenImageConformance(AdapterConformance):
    adapter_name = "qwenimage"
    recipe_plugins = ("qwenimage",)
    baseline = "qwenimage-baseline"
    full_size = "qwen-image"
    call: ClassVar[Mapping[str, Any]] = {"negative_prompt": "blurry", "true_cfg_scale": 4.0}
    # diffusers' QwenImageTransformer2DModel copies a Python int to the device to read a text padding mask
    # (compute_text_seq_len_from_mask), at every forward of prompts of different lengths, in its own pipeline too.
    model_syncs = ("in compute_text_seq_len_from_mask",)

    def make_pipeline(self) -> Any:
        return make_qwenimage_pipeline(seed=0)
