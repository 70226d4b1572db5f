"""FLOPs of Qwen-Image architectures on the meta device: Qwen-Image's configs (shipped here), or a local
QwenImagePipeline folder. The Qwen2.5-VL text encoder is excluded (it runs once per prompt, as for every adapter).

QwenImagePipeline runs true CFG as two transformer calls per step (the conditional and the negative prompt's);
both are counted, each with `TEXT_TOKENS` text tokens: the pipeline does not pad prompts, so the text length is
the prompt's own, and a nominal one is counted (the text is about 3 % of the tokens at 1024 x 1024).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ralu_core.measurement.dit_profile import DiTFlopsProfile, Reuse
from ralu_core.measurement.flops import FlopCount, cached_meta_module, count_flops
from ralu_core.pipelines.adapter import check_image_size
from ralu_core.pipelines.dit import swapped_submodule
from ralu_core.pipelines.pipeline_call import read_component_configs
from ralu_core.sampling.tokens import TokenGrid
from ralu_qwenimage.adapter import PATCH, GivenRope, rope_rows
from ralu_qwenimage.attention import QwenTokenProcessor, attention_modules

TEXT_TOKENS = 128
"""Text tokens counted per transformer call (a long prompt's; the pipeline keeps each prompt's own length)."""
BASELINE_STEPS = 50
"""QwenImagePipeline's default num_inference_steps."""


def load_qwen_image_config(part: str) -> dict[str, Any]:
    """Qwen-Image's ``transformer``, ``vae`` or ``scheduler`` config (a fresh copy)."""
    resource = resources.files("ralu_qwenimage").joinpath("data", "qwen-image", f"{part}.json")
    config: dict[str, Any] = json.loads(resource.read_text("utf-8"))
    return config


class QwenImageFlopsProfile(DiTFlopsProfile):
    """Counts QwenImageTransformer2DModel forwards (both true-CFG calls) and AutoencoderKLQwenImage decodes."""

    def __init__(self, name: str, transformer: dict[str, Any], vae: dict[str, Any], *, guidance: bool = True) -> None:
        self.name, self.transformer, self.vae = name, transformer, vae
        self.baseline_steps = BASELINE_STEPS
        self.text_tokens = TEXT_TOKENS
        self.cfg_batch = 2 if guidance else 1
        self.vae_factor = 2 ** len(vae.get("temperal_downsample", (False, True, True)))

    @classmethod
    def from_source(cls, source: str | Path) -> QwenImageFlopsProfile:
        """``qwen-image`` (the pipeline's default 50 steps, with true CFG: a negative prompt given, as Qwen-Image is
        run) or a QwenImagePipeline folder."""
        if str(source) == "qwen-image":
            return cls("qwen-image", load_qwen_image_config("transformer"), load_qwen_image_config("vae"))
        transformer, vae = read_component_configs(source, "qwen-image", "QwenImagePipeline")
        return cls(Path(source).name, transformer, vae)

    def without_guidance_batch(self) -> QwenImageFlopsProfile:
        single = QwenImageFlopsProfile(f"{self.name} (one pass per step)", self.transformer, self.vae, guidance=False)
        single.text_tokens = self.text_tokens
        return single

    def grid(self, height: int, width: int) -> TokenGrid:
        check_image_size(height, width, self.vae_factor * PATCH, "for Qwen-Image (VAE factor x 2 x 2 packing)")
        unit = self.vae_factor * PATCH
        channels = int(self.transformer.get("in_channels", 64)) // (PATCH * PATCH)
        return TokenGrid(rows=height // unit, cols=width // unit, channels=channels, patch=PATCH)

    def cached_attention(self) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
        return attention_modules, QwenTokenProcessor

    def transformer_forward(self, image_tokens: int, reuse: Reuse | None) -> FlopCount:
        """One call per true-CFG branch, on a strip of `image_tokens` tokens (RoPE rows given, as a partial step
        gives them)."""
        from diffusers import QwenImageTransformer2DModel

        model = cached_meta_module(QwenImageTransformer2DModel, self.transformer)
        meta = torch.device("meta")
        batch = self.cfg_batch
        inputs = {
            "hidden_states": torch.empty(batch, image_tokens, model.config.in_channels, device=meta),
            "encoder_hidden_states": torch.empty(
                batch, self.text_tokens, model.config.joint_attention_dim, device=meta
            ),
            "timestep": torch.empty(batch, device=meta),
            "img_shapes": [[(1, 1, image_tokens)]] * batch,
            "return_dict": False,
        }
        positions = torch.zeros(1, image_tokens, 2, dtype=torch.float64)
        rope = rope_rows(model.pos_embed, positions, 1, image_tokens)[0].to(meta)
        given = GivenRope(model.pos_embed, rope, 0)  # the text's positions cost nothing to count
        with (
            torch.no_grad(),
            nullcontext() if reuse is None else reuse(model),
            swapped_submodule(model, "pos_embed", given),
        ):
            return count_flops(lambda: model(**inputs))

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        from diffusers import AutoencoderKLQwenImage

        vae = cached_meta_module(AutoencoderKLQwenImage, self.vae)
        latents = torch.empty(1, vae.config.z_dim, 1, latent_height, latent_width, device="meta")
        with torch.no_grad():
            return count_flops(lambda: vae.decode(latents, return_dict=False))
