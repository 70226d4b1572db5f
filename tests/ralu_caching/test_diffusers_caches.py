"""`diffusers`: any of diffusers' caches by name and options in a recipe, applied for each call only."""

from __future__ import annotations

import pytest
import torch
import yaml

import ralu_core
from ralu_caching.diffusers_caches import available_methods
from ralu_core import RecipeError
from ralu_core.pipelines.testing_hooks import hook_snapshot
from ralu_core.testing import seeded_generators

from .helpers import with_cache

CALL = {"height": 128, "width": 128, "output_type": "latent"}

PAB = (
    "{name: diffusers, method: pyramid-attention-broadcast, options: "
    "{spatial_attention_block_skip_range: 2, spatial_attention_timestep_skip_range: [-1, 1001]}}"
)


@pytest.mark.parametrize(
    ("fixture", "recipe", "cache"),
    [
        ("flux", "ralu-flux-7x", "{name: diffusers, method: first-block, options: {threshold: 0.2}}"),
        ("flux", "ralu-flux-7x", "{name: diffusers, method: FirstBlockCacheConfig}"),
        ("flux", "ralu-flux-7x", PAB),
        ("sd3", "ralu-sd3-3x", "{name: diffusers, method: taylorseer, options: {cache_interval: 2}}"),
        ("sd3", "ralu-sd3-3x", PAB),
        ("flux", "ralu-flux-7x", "{name: diffusers, method: faster, options: {is_guidance_distilled: true}}"),
        ("sd3", "ralu-sd3-3x", "{name: diffusers, method: faster, options: {is_guidance_distilled: true}}"),
        (
            "sd3",
            "ralu-sd3-3x",
            "{name: diffusers, method: mag, options: {mag_ratios: [1.0, 1.0, 1.0, 1.0], num_inference_steps: 4}}",
        ),
    ],
)
def test_a_diffusers_cache_from_a_recipe_runs_and_is_removed(request, fixture: str, recipe: str, cache: str) -> None:  # type: ignore[no-untyped-def]
    pipe = request.getfixturevalue(fixture)
    ralu_core.accelerate(pipe, recipe)("warm", generator=seeded_generators(0), **CALL)  # diffusers' own leftovers
    before = hook_snapshot(pipe.transformer)
    registries = [n for n, m in pipe.transformer.named_modules() if hasattr(m, "_diffusers_hook")]
    out = ralu_core.accelerate(pipe, with_cache(recipe, cache))("a red circle", generator=seeded_generators(0), **CALL)
    assert torch.isfinite(out.images).all()
    assert hook_snapshot(pipe.transformer) == before
    assert [n for n, m in pipe.transformer.named_modules() if hasattr(m, "_diffusers_hook")] == registries


def test_the_users_own_cache_stays_while_a_recipe_adds_another(flux) -> None:  # type: ignore[no-untyped-def]
    from diffusers.hooks import FirstBlockCacheConfig

    flux.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    try:
        before = hook_snapshot(flux.transformer)
        ralu_core.accelerate(flux, with_cache("ralu-flux-7x", PAB))("a", generator=seeded_generators(0), **CALL)
        assert hook_snapshot(flux.transformer) == before
    finally:
        flux.transformer.disable_cache()


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ("{name: diffusers, method: first-blok}", "unknown diffusers cache 'first-blok' (did you mean 'first-block'?)"),
        (
            "{name: diffusers, method: first-block, options: {treshold: 0.1}}",
            "FirstBlockCacheConfig has no option 'treshold'; it takes: threshold",
        ),
        (
            "{name: diffusers, method: pyramid-attention-broadcast, options: {current_timestep_callback: 1}}",
            "has no option 'current_timestep_callback'",
        ),
        ("{name: diffusers}", "$.cache[0].method: required field missing"),
        (
            "{name: diffusers, method: pyramid-attention-broadcast, "
            'options: {spatial_attention_block_skip_range: "2"}}',
            "$.cache[0].options: PyramidAttentionBroadcastConfig.spatial_attention_block_skip_range must be "
            "int | None, got '2'",
        ),
        (
            "{name: diffusers, method: first-block, options: {threshold: '0.1'}}",
            "FirstBlockCacheConfig.threshold must be float, got '0.1'",
        ),
        (
            "{name: diffusers, method: pyramid-attention-broadcast, "
            "options: {spatial_attention_timestep_skip_range: [1]}}",
            "spatial_attention_timestep_skip_range must be tuple[int, int], got [1]",
        ),
        ("{name: diffusers, method: faster}", "set `is_guidance_distilled: true`"),
    ],
)
def test_bad_diffusers_entries_are_refused_before_any_work(flux, cache: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError) as info:
        ralu_core.accelerate(flux, with_cache("ralu-flux-7x", cache))
    assert message in str(info.value)


def test_the_installed_diffusers_offers_the_documented_methods() -> None:
    assert {"first-block", "taylorseer", "mag", "pyramid-attention-broadcast", "faster"} <= set(available_methods())


FIRST_BLOCK = "{name: diffusers, method: first-block, options: {threshold: 0.2}}"


def test_diffusers_first_block_on_sd3_is_refused_when_accelerated(sd3) -> None:  # type: ignore[no-untyped-def]
    """It failed with a TypeError at its first reuse: SD3's last block returns no text stream."""
    with pytest.raises(RecipeError, match=r"\$\.cache\[0\]: diffusers' first-block cache cannot run on 'sd3' pip"):
        ralu_core.accelerate(sd3, with_cache("ralu-sd3-3x", FIRST_BLOCK))


def test_diffusers_first_block_on_sd3_is_found_by_recipes_validate(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from ralu_core.cli import main

    path = tmp_path / "sd3-first-block.yaml"
    path.write_text(yaml.safe_dump(with_cache("ralu-sd3-3x", FIRST_BLOCK).to_yaml_dict()), encoding="utf-8")
    assert main(["recipes", "validate", str(path)]) == 2
    assert "on 'sd3' pipelines: $.cache[0]: diffusers' first-block cache cannot run" in capsys.readouterr().err
    flux = tmp_path / "flux-first-block.yaml"
    flux.write_text(yaml.safe_dump(with_cache("ralu-flux-7x", FIRST_BLOCK).to_yaml_dict()), encoding="utf-8")
    assert main(["recipes", "validate", str(flux)]) == 0


def test_diffusers_first_block_is_refused_at_attach_where_an_adapter_does_not_say(sd3) -> None:  # type: ignore[no-untyped-def]
    """The backstop for adapters that do not declare their last block: the model's own blocks are read."""
    from ralu_caching.diffusers_caches import DiffusersCache, DiffusersCacheConfig

    cache = DiffusersCache(DiffusersCacheConfig(method="first-block", options={"threshold": 0.2}))
    attached = cache.attach(sd3.transformer)
    with pytest.raises(ValueError, match="cannot run on SD3Transformer2DModel: the last block returns no text"):
        attached.__enter__()


def test_a_users_diffusers_first_block_cache_on_sd3_is_refused_before_any_model_runs(sd3) -> None:  # type: ignore[no-untyped-def]
    """It raised `TypeError: unsupported operand type(s) for -: 'NoneType' and 'Tensor'` from inside diffusers."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from ralu_caching.blocks import hooks_added
    from ralu_core.errors import UnsupportedPipelineError

    calls: list[int] = []
    with hooks_added(sd3.transformer):
        apply_first_block_cache(sd3.transformer, FirstBlockCacheConfig(threshold=0.2))
        handle = sd3.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            with pytest.raises(
                UnsupportedPipelineError, match=r"carries diffusers' first-block cache .* ralu's `first-b"
            ):
                ralu_core.accelerate(sd3, "ralu-sd3-3x")("a red circle", generator=seeded_generators(0), **CALL)
        finally:
            handle.remove()
    assert calls == []
