"""A user's own diffusers caches on the FLUX transformer work under RALU recipes: each token set, CFG branch
and group of images evaluated together gets its own cache state, and the user's setup is left as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

import ralu_core
from ralu_core.pipelines.testing_hooks import hook_snapshot, install_audit, remove_audit
from ralu_core.testing import seeded_generators

CALL = {"height": 128, "width": 128, "output_type": "latent"}


def configs(pipe: Any) -> dict[str, Callable[[], Any]]:
    """The diffusers caches that FluxPipeline itself runs (FasterCache fails in diffusers' own FLUX loop)."""
    return {
        "first-block": lambda: FirstBlockCacheConfig(threshold=0.2),
        "taylorseer": lambda: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1),
        "mag": lambda: MagCacheConfig(mag_ratios=[1.0] * 28, num_inference_steps=28),
        "pyramid-attention-broadcast": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
    }


@pytest.fixture
def cached(pipe, audit) -> Iterator[Callable[[str], Any]]:  # type: ignore[no-untyped-def]
    """Enable a diffusers cache the user's way; disabled again after the test, before the audit hook goes
    (diffusers can only remove the most recently added hook of a module cleanly)."""

    def enable(name: str) -> Any:
        config = configs(pipe)[name]()
        pipe.transformer.enable_cache(config)
        return config

    yield enable
    if pipe.transformer.is_cache_enabled:
        pipe.transformer.disable_cache()


@pytest.fixture
def audit(pipe):  # type: ignore[no-untyped-def]
    block = pipe.transformer.transformer_blocks[0]
    yield install_audit(block)
    remove_audit(block)


@pytest.mark.parametrize("name", ["first-block", "taylorseer", "mag", "pyramid-attention-broadcast"])
def test_a_users_diffusers_cache_runs_under_every_ralu_stage(pipe, cached, audit, name: str) -> None:  # type: ignore[no-untyped-def]
    config = cached(name)
    before = hook_snapshot(pipe.transformer)
    out = ralu_core.accelerate(pipe, "ralu-flux-7x")("a red circle", generator=seeded_generators(0), **CALL)
    assert out.images.shape == (1, 64, 64) and torch.isfinite(out.images).all()
    # The user's configuration and hooks are as they were; the pipeline's timestep is cleared again.
    assert pipe.transformer._cache_config is config
    assert hook_snapshot(pipe.transformer) == before
    assert getattr(pipe, "_current_timestep", None) is None
    assert audit.state_manager._state_cache == {}, "hook state must not outlive the call"
    # One context per branch; it saw 16 half-resolution tokens, then 13 + 4 x 3, then 64, each after a reset.
    assert {entry[3] for entry in audit.log} == {16, 25, 64}
    assert {entry[0] for entry in audit.log} == {"cond"}


def test_each_cfg_branch_has_its_own_context_and_a_batch_shares_each_step(pipe, cached, audit) -> None:  # type: ignore[no-untyped-def]
    cached("first-block")
    fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
    fast(
        ["a red circle", "a blue square"],
        negative_prompt="blurry",
        true_cfg_scale=2.0,
        generator=seeded_generators(0, 1),
        **CALL,
    )
    # Stage 2: the two images picked different edge tokens, yet share one call per branch and step (RoPE
    # per image): 10 steps x 2 branches, one context per branch.
    assert {entry[0] for entry in audit.log} == {"cond", "uncond"}
    assert len(audit.log) == 20


def test_with_processors_it_does_not_know_images_at_different_positions_run_apart(pipe, cached, audit) -> None:  # type: ignore[no-untyped-def]
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class Custom(FluxAttnProcessor):
        pass

    cached("first-block")
    block = pipe.transformer.transformer_blocks[0].attn
    original, block.processor = block.processor, Custom()
    try:
        fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
        fast(["a red circle", "a blue square"], generator=seeded_generators(0, 1), **CALL)
    finally:
        block.processor = original
    names = {entry[0] for entry in audit.log}
    assert {"cond", "cond/images 0", "cond/images 1"} == names  # each image group in its own context
    assert isinstance(block.processor, FluxAttnProcessor) and block.processor is original


def test_the_step_each_evaluation_serves_reaches_the_hooks(pipe, audit) -> None:  # type: ignore[no-untyped-def]
    ralu_core.accelerate(pipe, "ralu-flux-7x")("a red circle", generator=seeded_generators(0), **CALL)
    assert [entry[1] for entry in audit.log] == [0, 1, 0, 1, 2, 0, 1, 2, 3, 4]


def test_without_the_engines_reset_a_hook_would_see_two_token_sets(pipe, audit, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The audit itself can fail: skip the reset at stage changes and it reports the mixed token sets."""
    from ralu_core.pipelines.pipeline_call import DiffusersHooks

    monkeypatch.setattr(DiffusersHooks, "begin_stage", lambda self, stage: None)
    with pytest.raises(AssertionError, match="without a reset"):
        ralu_core.accelerate(pipe, "ralu-flux-7x")("a red circle", generator=seeded_generators(0), **CALL)


def test_batch_equals_singles_with_a_deterministic_diffusers_cache(pipe, cached) -> None:  # type: ignore[no-untyped-def]
    cached("taylorseer")
    fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
    batch = fast(["a red circle", "a blue square"], generator=seeded_generators(3, 4), **CALL).images
    singles = [
        fast(p, generator=seeded_generators(s), **CALL).images[0]
        for p, s in (("a red circle", 3), ("a blue square", 4))
    ]
    assert torch.allclose(batch, torch.stack(singles), atol=1e-5)


def test_the_plain_pipeline_still_works_with_the_cache_afterwards(pipe, cached) -> None:  # type: ignore[no-untyped-def]
    cached("first-block")
    ralu_core.accelerate(pipe, "ralu-flux-7x")("a red circle", generator=seeded_generators(0), **CALL)
    out = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), **CALL)
    assert out.images.shape == (1, 64, 64)
