"""diffusers' caches on the SD3 transformer, applied with diffusers' `apply_*` functions (SD3's transformer
has no `enable_cache`, and StableDiffusion3Pipeline cannot run them at all: it sets no cache context), work
under RALU recipes, each token set with fresh state, the user's model left as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from diffusers.hooks import (
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)

import ralu_core
from ralu_core.pipelines.testing_hooks import hook_snapshot, install_audit, remove_audit
from ralu_core.testing import seeded_generators

CALL = {"height": 128, "width": 96, "output_type": "latent", "guidance_scale": 5.0}


def appliers(pipe: Any) -> dict[str, Callable[[torch.nn.Module], None]]:
    """Those of diffusers' caches that its hooks support on SD3 (its first-block cache cannot handle SD3's
    last block, which returns no text stream, and FasterCache expects video-shaped tensors)."""
    return {
        "taylorseer": lambda m: apply_taylorseer_cache(m, TaylorSeerCacheConfig(cache_interval=2)),
        "mag": lambda m: apply_mag_cache(m, MagCacheConfig(mag_ratios=[1.0] * 28, num_inference_steps=28)),
        "pyramid-attention-broadcast": lambda m: apply_pyramid_attention_broadcast(
            m,
            PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2,
                spatial_attention_timestep_skip_range=(-1, 1001),
                current_timestep_callback=lambda: ralu_core.current_timestep(pipe),
            ),
        ),
    }


def remove_all_hooks(module: torch.nn.Module) -> None:
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is not None:
            for name in reversed(list(registry._hook_order)):
                registry.remove_hook(name, recurse=False)


@pytest.fixture
def audited(sd3) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    block = sd3.transformer.transformer_blocks[0]
    audit = install_audit(block)
    yield audit
    remove_all_hooks(sd3.transformer)
    remove_audit(block)


@pytest.mark.parametrize("name", ["taylorseer", "mag", "pyramid-attention-broadcast"])
def test_a_diffusers_cache_runs_under_every_ralu_stage(sd3, audited, name: str) -> None:  # type: ignore[no-untyped-def]
    appliers(sd3)[name](sd3.transformer)
    before = hook_snapshot(sd3.transformer)
    had_registry = hasattr(sd3.transformer, "_diffusers_hook")
    out = ralu_core.accelerate(sd3, "ralu-sd3-3x")("a red circle", generator=seeded_generators(0), **CALL)
    assert out.images.shape == (1, 16, 16, 12) and torch.isfinite(out.images).all()
    assert hook_snapshot(sd3.transformer) == before
    assert hasattr(sd3.transformer, "_diffusers_hook") == had_registry
    # The CFG pair runs as one batch, in diffusers' context for that ("cond_uncond"); stage 2's mixed tokens
    # go through the same forward, so the hooks see 12 half-res tokens, then 10 + 4 x 2, then 48.
    assert {entry[0] for entry in audited.log} == {"cond_uncond"}
    assert [entry[3] for entry in audited.log] == [12] * 3 + [18] * 3 + [48] * 6
    assert ralu_core.current_timestep(sd3) is None
    assert audited.state_manager._state_cache == {}, "hook state must not outlive the call"


def test_batch_equals_singles_with_a_deterministic_diffusers_cache(sd3, audited) -> None:  # type: ignore[no-untyped-def]
    appliers(sd3)["taylorseer"](sd3.transformer)
    fast = ralu_core.accelerate(sd3, "ralu-sd3-3x")
    prompts = ["a red circle", "a blue square"]
    batch = fast(prompts, generator=seeded_generators(3, 4), **CALL).images
    singles = [fast(p, generator=seeded_generators(s), **CALL).images[0] for p, s in zip(prompts, (3, 4), strict=True)]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-4)


def test_pyramid_attention_broadcast_reads_the_timestep_ralu_runs(sd3, audited) -> None:  # type: ignore[no-untyped-def]
    seen: list[float] = []

    def callback() -> Any:
        t = ralu_core.current_timestep(sd3)
        seen.append(float(t))
        return t

    config = PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2, current_timestep_callback=callback)
    apply_pyramid_attention_broadcast(sd3.transformer, config)
    ralu_core.accelerate(sd3, "ralu-sd3-3x")("a red circle", generator=seeded_generators(0), **CALL)
    assert seen and all(0.0 < t <= 1000.0 for t in seen)
    assert seen[0] == pytest.approx(1000.0)
