"""`db-cache`: DBCache's Fn/Bn rule: the front blocks always run and decide per image, the middle blocks are
reused as one residual, the back blocks always run on the result; warm-up and caps force full evaluations;
`first-block` is its F1B0 case (its own tests in test_first_block.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ralu_core
from ralu_caching.db_cache import DBCache, DBCacheConfig
from ralu_core.errors import ConfigFieldError, PluginError
from ralu_core.testing import seeded_generators

from .helpers import run_twice, with_cache

CALL = {"height": 64, "width": 64, "output_type": "latent"}
ALWAYS = "threshold: 10"  # every image reuses whenever it may: what runs is then the schedule's alone


def _runs(pipe: Any, cache: str, steps: int = 6) -> dict[str, int]:
    """Evaluations in which a front, a middle and a back block of flux-mid (12 blocks) ran their own layers."""
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    watched = {"front": blocks[1], "middle": blocks[6], "back": blocks[-1]}
    runs = dict.fromkeys(watched, 0)
    handles = [
        (b.ff.net[-1] if hasattr(b, "ff") else b.proj_mlp).register_forward_pre_hook(
            lambda *a, n=name: runs.__setitem__(n, runs[n] + 1)
        )
        for name, b in watched.items()
    ]
    try:
        fast = ralu_core.accelerate(pipe, with_cache("flux-baseline", cache))
        fast("a", generator=seeded_generators(0), num_inference_steps=steps, **CALL)
    finally:
        for handle in handles:
            handle.remove()
    return runs


@pytest.mark.parametrize(
    ("options", "middle"),
    [
        ("", 1),  # the first evaluation computes, every later one reuses
        ("warmup: 3", 3),
        ("max_consecutive: 1", 3),  # computes at 0, 2, 4
        ("max_consecutive: 2", 2),  # 0, 3
        ("max_cached: 2", 6 - 2),
    ],
)
def test_front_and_back_blocks_always_run_and_the_schedule_limits_reuse(flux_mid, options: str, middle: int) -> None:  # type: ignore[no-untyped-def]
    cache = f"{{name: db-cache, front: 2, back: 1, {ALWAYS}{', ' + options if options else ''}}}"
    assert _runs(flux_mid, cache) == {"front": 6, "middle": middle, "back": 6}


def test_the_back_blocks_run_on_the_front_output_plus_the_cached_middle_residual(flux_mid) -> None:  # type: ignore[no-untyped-def]
    blocks = [*flux_mid.transformer.transformer_blocks, *flux_mid.transformer.single_transformer_blocks]
    front_out: list[torch.Tensor] = []
    back_in: list[torch.Tensor] = []
    handles = [
        blocks[1].register_forward_hook(lambda m, a, out: front_out.append(out[1])),  # FLUX blocks: (text, image)
        blocks[-1].register_forward_pre_hook(lambda m, a, k: back_in.append(k["hidden_states"]), with_kwargs=True),
    ]
    try:
        fast = ralu_core.accelerate(
            flux_mid, with_cache("flux-baseline", f"{{name: db-cache, front: 2, back: 1, {ALWAYS}}}")
        )
        fast("a", generator=seeded_generators(0), num_inference_steps=3, **CALL)
    finally:
        for handle in handles:
            handle.remove()
    residual = back_in[0] - front_out[0]
    for step in (1, 2):
        torch.testing.assert_close(back_in[step], front_out[step] + residual, rtol=0, atol=1e-6)
        assert (front_out[step] - front_out[0]).abs().max() > 1e-4  # the front blocks ran again


def test_each_image_decides_for_itself(sd3_mid) -> None:  # type: ignore[no-untyped-def]
    """Two consecutive evaluations: image 0 barely moves and reuses the middle, image 1 changes and computes;
    the batch gives what each image gets alone."""
    g = torch.Generator().manual_seed(3)
    first = torch.randn(2, 16, 8, 8, generator=g)
    second = first.clone()
    second[0] += 1e-4 * torch.randn(16, 8, 8, generator=g)
    second[1] += 2.0 * torch.randn(16, 8, 8, generator=g)
    config = DBCacheConfig(front=2, back=1, threshold=0.05)
    cache = DBCache(config)
    batch = run_twice(sd3_mid, first, second, slice(0, 2), cache)
    assert cache.measured_reuse() == (1, 4)
    alone = [run_twice(sd3_mid, first, second, slice(i, i + 1), DBCache(config)) for i in range(2)]
    torch.testing.assert_close(batch, torch.cat(alone), rtol=0, atol=1e-5)


def test_too_many_front_and_back_blocks_are_refused_before_any_model_runs(flux) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(flux, with_cache("flux-baseline", "{name: db-cache, front: 8, back: 8}"))
    with pytest.raises(PluginError, match="needs at least 17"):
        fast("a", generator=seeded_generators(0), **CALL)
    with pytest.raises(ConfigFieldError, match="must be from 1 to 1000"):
        DBCacheConfig(front=0)


def test_the_taylorseer_calibrator_forecasts_the_cached_residual(flux_mid) -> None:  # type: ignore[no-untyped-def]
    """residual_order 1: full at evaluations 0 and 1 (warm-up), then the middle residual is extrapolated linearly
    from those two: r1 + (r1 - r0) * k at k evaluations past the last full one."""
    blocks = [*flux_mid.transformer.transformer_blocks, *flux_mid.transformer.single_transformer_blocks]
    front_out: list[torch.Tensor] = []
    back_in: list[torch.Tensor] = []
    handles = [
        blocks[1].register_forward_hook(lambda m, a, out: front_out.append(out[1])),
        blocks[-1].register_forward_pre_hook(lambda m, a, k: back_in.append(k["hidden_states"]), with_kwargs=True),
    ]
    cache = f"{{name: db-cache, front: 2, back: 1, {ALWAYS}, warmup: 2, residual_order: 1}}"
    try:
        fast = ralu_core.accelerate(flux_mid, with_cache("flux-baseline", cache))
        fast("a", generator=seeded_generators(0), num_inference_steps=4, **CALL)
    finally:
        for handle in handles:
            handle.remove()
    r0, r1 = (back_in[i] - front_out[i] for i in (0, 1))
    for k, step in ((1, 2), (2, 3)):
        torch.testing.assert_close(back_in[step], front_out[step] + r1 + (r1 - r0) * k, rtol=0, atol=1e-5)
    with pytest.raises(ConfigFieldError, match=r"must be 0 \(plain reuse\), 1 or 2"):
        DBCacheConfig(residual_order=3)
