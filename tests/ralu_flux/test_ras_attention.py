"""RAS on FLUX: sparse steps attend to every token, the skipped ones through keys and values cached after RoPE."""

from __future__ import annotations

import pytest
import torch

import ralu_core
from ralu_core.errors import RecipeError, UnsupportedPipelineError
from ralu_core.recipes import load_recipe_text
from ralu_core.testing.conformance import cached_attention_outputs, dense_at
from ralu_flux.adapter import FluxAdapter

CALL = {"max_sequence_length": 16, "output_type": "latent", "height": 64, "width": 96}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ras(steps: int = 6, extra: str = "ratio: 0.5, dense_warmup: 2", inactive: str = "") -> ralu_core.Recipe:
    return load_recipe_text(
        f"name: ras-test\nmodel: flux\nschedule: uniform\nstages:\n"
        f"  - {{level: 0, steps: {steps}, step_tokens: {{name: ras-focus, {extra}}}{inactive}}}\n"
    )


@pytest.mark.parametrize("true_cfg", [False, True])
def test_cached_attention_agrees_with_the_dense_forward(pipe, true_cfg: bool) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**CALL, "prompt": ["a red circle", "a blue square"], "generator": [gen(1), gen(2)]}
    if true_cfg:
        kwargs |= {"negative_prompt": "blurry", "true_cfg_scale": 3.0}
    out = cached_attention_outputs(FluxAdapter(), pipe, kwargs)
    assert torch.equal(out.recorded, out.plain)  # the stand-in processor computes what FluxAttnProcessor does
    assert torch.equal(out.everything, out.plain)  # ratio 1.0 through the sparse path: exactly dense
    assert not torch.equal(out.active[0], out.active[1])  # one token set per image, in one batch
    torch.testing.assert_close(out.subset, dense_at(out), rtol=1e-5, atol=1e-5)
    # Dropping the skipped tokens from attention instead changes the computed tokens' outputs.
    assert (out.dropped - dense_at(out)).abs().max() > 1e-3
    # Keys and values of every token, per attention layer (19 + 38 in FLUX.1-dev), per image and branch.
    config = pipe.transformer.config
    layers = config.num_layers + config.num_single_layers
    slots = 2 * (2 if true_cfg else 1)
    width = config.num_attention_heads * config.attention_head_dim
    assert out.cache_bytes == layers * 2 * slots * 24 * width * 4  # 64 x 96 px -> 4 x 6 tokens, float32


@pytest.mark.parametrize("true_cfg", [False, True])
def test_a_batch_shares_one_transformer_call_per_step_and_branch(pipe, true_cfg: bool) -> None:  # type: ignore[no-untyped-def]
    """The images of a batch pick different tokens, yet run in one call per step: our own stand-in processors,
    in place for the stage, are no reason to evaluate them apart."""
    batches: list[int] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    extra = {"negative_prompt": "blurry", "true_cfg_scale": 3.0} if true_cfg else {}
    try:
        ralu_core.accelerate(pipe, ras())(
            ["a red circle", "a blue square"], generator=[gen(1), gen(2)], **CALL, **extra
        )
    finally:
        hook.remove()
    assert batches == [2] * 6 * (2 if true_cfg else 1)


def test_cached_keys_values_differ_from_dropping_them(pipe) -> None:  # type: ignore[no-untyped-def]
    cached = ralu_core.accelerate(pipe, ras())("a red circle", generator=gen(3), **CALL).images
    dropped = ralu_core.accelerate(pipe, ras(inactive=", inactive: drop"))("a red circle", generator=gen(3), **CALL)
    dense = ralu_core.accelerate(pipe, "flux-baseline")("a red circle", generator=gen(3), num_inference_steps=6, **CALL)
    assert (cached - dropped.images).abs().max() > 1e-3
    # Keeping every token in attention stays closer to the dense run than dropping the skipped ones.
    assert (cached - dense.images).abs().mean() < (dropped.images - dense.images).abs().mean()


def test_two_ras_pipelines_alternate_without_sharing_state(pipe) -> None:  # type: ignore[no-untyped-def]
    from ralu_flux.testing import make_flux_pipeline

    other = make_flux_pipeline("tiny", seed=1)
    other.set_progress_bar_config(disable=True)
    first, second = ralu_core.accelerate(pipe, ras()), ralu_core.accelerate(other, ras(extra="ratio: 0.25"))
    alone = [first("a cat", generator=gen(4), **CALL).images, second("a cat", generator=gen(4), **CALL).images]
    again = [first("a cat", generator=gen(4), **CALL).images, second("a cat", generator=gen(4), **CALL).images]
    assert all(torch.equal(a, b) for a, b in zip(alone, again, strict=True))


def test_a_processor_it_does_not_know_is_refused_before_the_text_encoders(pipe) -> None:  # type: ignore[no-untyped-def]
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class Custom(FluxAttnProcessor):
        pass

    block = pipe.transformer.single_transformer_blocks[0].attn
    original = block.processor
    block.processor = Custom()
    encoded = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        with pytest.raises(UnsupportedPipelineError, match=r"single_transformer_blocks\.0\.attn uses Custom"):
            ralu_core.accelerate(pipe, ras())("a cat", generator=gen(0), **CALL)
        # Without cached keys and values the recipe runs on any processor.
        ralu_core.accelerate(pipe, ras(inactive=", inactive: drop"))("a cat", generator=gen(0), **CALL)
    finally:
        hook.remove()
        block.processor = original
    assert len(encoded) == 1  # only the run that was accepted


def test_processors_come_back_after_an_error_mid_run(pipe) -> None:  # type: ignore[no-untyped-def]
    processors = dict(pipe.transformer.attn_processors)
    calls = []

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")

    hook = pipe.transformer.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            ralu_core.accelerate(pipe, ras())("a cat", generator=gen(0), **CALL)
    finally:
        hook.remove()
    assert dict(pipe.transformer.attn_processors) == processors


def test_inactive_needs_step_tokens_and_a_known_mode(pipe) -> None:  # type: ignore[no-untyped-def]
    bad = "name: bad\nschedule: uniform\nstages:\n  - {level: 0, steps: 4, inactive: kv-cache}\n"
    with pytest.raises(RecipeError, match=r"\$\.stages\[0\]\.inactive: only for a stage with `step_tokens`"):
        ralu_core.accelerate(pipe, load_recipe_text(bad))
    with pytest.raises(RecipeError, match=r"\$\.stages\[0\]\.inactive: must be one of kv-cache, drop, got 'kv'"):
        ralu_core.accelerate(pipe, ras(inactive=", inactive: kv"))


def test_bench_reports_the_memory_of_the_token_caches(pipe) -> None:  # type: ignore[no-untyped-def]
    from ralu_core.measurement.bench import BenchPlan, markdown_table, run_bench
    from ralu_core.plugins import Registry, create_plugin_manager

    registry = Registry.collect(create_plugin_manager())
    baseline, fast = (ralu_core.accelerate(pipe, r, plugin_manager=registry.pm) for r in ("flux-baseline", ras()))
    kwargs = {"height": 64, "width": 96, "max_sequence_length": 16}
    plan = BenchPlan(recipes=[baseline, fast], prompts=["a cat"], seeds=[0], call_kwargs=kwargs, steps=6, decode=False)
    result = run_bench(plan, [], baseline.adapter.pipeline_flops_profile(pipe, kwargs))
    config = pipe.transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    keys_values = (config.num_layers + config.num_single_layers) * 2 * 24 * width * 4  # one image, float32
    outputs = 24 * 64 * 4  # the reused velocity: 24 tokens of 16 channels x 2 x 2
    assert result.token_cache_bytes == {"flux-baseline": 0, "ras-test": keys_values + outputs}
    assert "| token cache MiB |" in markdown_table(result, "test")
    assert not [p for p in registry.pm.get_plugins() if type(p).__name__ == "TokenCacheMemory"]  # bench cleaned up


@pytest.mark.parametrize("ratio", [1.0, 0.01])
def test_every_ratio_in_range_runs(pipe, ratio: float) -> None:  # type: ignore[no-untyped-def]
    """1.0 computes every token at every step (the baseline exactly); a ratio below one token computes one."""
    counts: list[int] = []

    class Count:
        @ralu_core.hookimpl
        def ralu_on_step_end(self, event) -> None:  # type: ignore[no-untyped-def]
            counts.append(event.active_tokens)

    from ralu_core.plugins import create_plugin_manager

    manager = create_plugin_manager(plugins=[Count()])
    fast = ralu_core.accelerate(pipe, ras(extra=f"ratio: {ratio}, dense_warmup: 2"), plugin_manager=manager)
    out = fast("a red circle", generator=gen(5), **CALL).images
    dense = ralu_core.accelerate(pipe, "flux-baseline")("a red circle", generator=gen(5), num_inference_steps=6, **CALL)
    if ratio == 1.0:
        assert counts == [24] * 6 and torch.equal(out, dense.images)
    else:
        assert counts == [24, 24, 1, 1, 1, 1] and torch.isfinite(out).all()
