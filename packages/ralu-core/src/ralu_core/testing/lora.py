"""What an adapter guarantees for a pipeline with LoRAs loaded (`LoraConformance`), on random LoRAs that
`random_lora` writes in the format ``pipe.load_lora_weights`` reads, so that no LoRA file is downloaded.

A user's LoRA changes the transformer's projections (PEFT wraps them) and may be scaled per call
(``joint_attention_kwargs={"scale": s}``), fused into the weights, or mixed with others (``set_adapters``). Every
recipe must honour all of these: a baseline equals the plain pipeline with the same LoRAs, a LoRA scaled to 0
gives the images of no LoRA (so the scale reaches the projections RAS's stand-in processors call), and the
pipeline's LoRA state is left as the user set it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ralu_core.pipelines.compiling import compile_denoiser, graphs_compiled
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.testing.conformance import PROMPTS, RecipesOnAPipeline, assert_same_snapshot, pipeline_snapshot

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections LoRAs for DiTs usually adapt (diffusers' own training scripts' default)."""


def random_lora(
    transformer: torch.nn.Module, *, rank: int = 4, seed: int = 0, targets: Sequence[str] = LORA_TARGETS
) -> dict[str, torch.Tensor]:
    """A random LoRA for every projection of `transformer` named by `targets`, as the state dict
    ``pipe.load_lora_weights`` takes (PEFT keys under ``transformer.``). Both factors are random (a trained
    LoRA's B is not zero), scaled so that the LoRA changes the images without overwhelming the model."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, wrapped in sorted(transformer.named_modules()):
        module = getattr(wrapped, "base_layer", wrapped)  # a projection another LoRA already wraps
        if not isinstance(module, torch.nn.Linear) or not any(name.endswith(f".{t}") for t in targets):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
        up = torch.randn(module.out_features, rank, generator=generator) * 0.5 / rank**0.5
        state[f"transformer.{name}.lora_A.weight"] = down.to(module.weight.dtype)
        state[f"transformer.{name}.lora_B.weight"] = up.to(module.weight.dtype)
    if not state:
        raise ValueError(f"no linear layer of {type(transformer).__name__} ends with any of {list(targets)}")
    return state


class LoraConformance(RecipesOnAPipeline):
    """pytest mixin: a baseline recipe, a RALU recipe and a RAS recipe of the adapter on a pipeline with LoRAs
    loaded by ``load_lora_weights``: unfused and scaled per call, fused, two mixed by ``set_adapters``, and
    hot-swapped under torch.compile. Subclass as ``Test...``, set the class attributes and implement
    `make_pipeline` (a tiny random-weight pipeline whose class has diffusers' LoRA loader)."""

    def with_loras(self, *loras: str) -> Any:
        """A new pipeline with the named random LoRAs loaded (seeded by their order), unfused."""
        pipe = self.fresh()
        for seed, name in enumerate(loras):
            pipe.load_lora_weights(random_lora(pipe.transformer, seed=seed), adapter_name=name)
        return pipe

    def run_scaled(self, pipe: Any, recipe: str | None, scale: float | None = None) -> torch.Tensor:
        """`run`, with the LoRA scale given per call where `scale` is."""
        extra = {} if scale is None else {"joint_attention_kwargs": {"scale": scale}}
        return self.run(pipe, recipe, **extra)

    def test_the_baseline_is_the_plain_pipeline_with_the_same_lora_and_scale(self) -> None:
        pipe = self.with_loras("style")
        for scale in (None, 0.5):
            assert torch.equal(self.run_scaled(pipe, self.baseline, scale), self.run_scaled(pipe, None, scale)), scale

    def test_every_recipe_applies_the_lora_and_its_per_call_scale(self) -> None:
        without, pipe = self.with_loras(), self.with_loras("style")
        self.run_scaled(pipe, None, scale=0.0)  # the pipeline's own call keeps its last LoRA scale (`_lora_scale`)
        before = pipeline_snapshot(pipe)
        for recipe in self.recipes:
            bare = self.run(without, recipe)
            assert (self.run(pipe, recipe) - bare).abs().max() > 1e-3, f"{recipe}: the LoRA changed nothing"
            gap = float((self.run_scaled(pipe, recipe, scale=0.0) - bare).abs().max())
            assert gap <= 1e-6, f"{recipe}: the LoRA at scale 0 moved the latents by {gap}"
        assert_same_snapshot(before, pipeline_snapshot(pipe))

    def test_a_fused_lora_gives_what_the_unfused_one_gives(self) -> None:
        unfused, fused = self.with_loras("style"), self.with_loras("style")
        fused.fuse_lora()
        assert torch.equal(self.run(fused, self.baseline), self.run(fused, None))
        for recipe in self.recipes:
            torch.testing.assert_close(self.run(fused, recipe), self.run(unfused, recipe), rtol=0, atol=1e-4)

    def test_adapters_mixed_by_set_adapters_are_each_weighted(self) -> None:
        without, pipe = self.with_loras(), self.with_loras("style", "subject")
        pipe.set_adapters(["style", "subject"], [0.0, 0.0])
        assert torch.equal(self.run(pipe, self.baseline), self.run(pipe, None))
        for recipe in self.recipes:
            torch.testing.assert_close(self.run(pipe, recipe), self.run(without, recipe), rtol=0, atol=1e-6)
        pipe.set_adapters(["style", "subject"], [0.5, 1.0])
        assert torch.equal(self.run(pipe, self.baseline), self.run(pipe, None))
        for recipe in self.recipes:
            assert (self.run(pipe, recipe) - self.run(without, recipe)).abs().max() > 1e-3, recipe

    def test_a_lora_hot_swapped_under_compile_compiles_nothing_new(self) -> None:
        """diffusers' hot swap (``enable_lora_hotswap`` before the first LoRA, then ``hotswap=True``) replaces a
        LoRA's weights in place: with the blocks compiled, a LoRA of the same rank, or of a lower one padded to
        the target rank, compiles no graph again, and the images change."""
        torch._dynamo.reset()
        pipe = self.fresh()
        pipe.enable_lora_hotswap(target_rank=8)
        pipe.load_lora_weights(random_lora(pipe.transformer, rank=8, seed=0), adapter_name="style")
        recipe = self.recipes[-1]
        adapter = Registry.collect(create_plugin_manager()).resolve_adapter(pipe)
        denoiser = adapter.bind(pipe, 0, (), {"prompt": PROMPTS[0], **self.call}).denoiser
        assert compile_denoiser(denoiser, backend="eager") > 0
        first = self.run(pipe, recipe)
        compiled = graphs_compiled()
        for seed, rank in ((1, 8), (2, 4)):
            pipe.load_lora_weights(
                random_lora(pipe.transformer, rank=rank, seed=seed), adapter_name="style", hotswap=True
            )
            swapped = self.run(pipe, recipe)
            assert graphs_compiled() == compiled, f"a rank-{rank} LoRA swapped in compiled again"
            assert (swapped - first).abs().max() > 1e-3
