"""U-Net pipelines through `accelerate(pipe, recipe)`: the DeepCache package's helper for the call, the
pipeline restored afterwards, and only recipes that say what runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import ralu_core
from ralu_caching.testing import make_sd_pipeline, make_sdxl_pipeline
from ralu_core import PluginError, RecipeError
from ralu_core.recipes import load_recipe_text

CALL: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 10, "output_type": "np"}


@pytest.fixture(scope="module")
def sd():  # type: ignore[no-untyped-def]
    pipe = make_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl():  # type: ignore[no-untyped-def]
    pipe = make_sdxl_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(runner: Any) -> np.ndarray:
    return runner("a red circle", generator=torch.Generator().manual_seed(0), **CALL).images  # type: ignore[no-any-return]


def forwards(pipe: Any) -> dict[str, Any]:
    return {name: vars(m)["forward"] for name, m in pipe.unet.named_modules() if "forward" in vars(m)}


@pytest.mark.parametrize("fixture", ["sd", "sdxl"])
def test_the_output_is_the_deepcache_helpers_and_the_pipeline_is_restored(request, fixture: str) -> None:  # type: ignore[no-untyped-def]
    from DeepCache import DeepCacheSDHelper

    sd = request.getfixturevalue(fixture)
    plain = generate(sd)
    assert forwards(sd) == {}
    accelerated = generate(ralu_core.accelerate(sd, "sd-deepcache"))
    assert forwards(sd) == {}, "the helper's wrappers must not outlive the call"
    helper = DeepCacheSDHelper(pipe=sd)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    try:
        direct = generate(sd)
    finally:
        helper.disable()
    assert np.array_equal(accelerated, direct)
    assert not np.allclose(accelerated, plain, atol=1e-4)  # DeepCache did reuse features
    for module in sd.unet.modules():  # undo what the helper itself leaves behind
        vars(module).pop("forward", None)
    assert np.array_equal(generate(sd), plain)


def test_interval_one_is_the_plain_pipeline(sd) -> None:  # type: ignore[no-untyped-def]
    recipe = load_recipe_text(
        "name: sd-full\nmodel: unet\nschedule: uniform\nstages: [{level: 0}]\n"
        "cache: [{name: deepcache-unet, interval: 1}]\n"
    )
    assert np.array_equal(generate(ralu_core.accelerate(sd, recipe)), generate(sd))


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        (
            "stages: [{steps: 2, end: 0.3, level: 1},"
            " {steps: 3, end: 1.0, transition: nt-dm-upsample, selector: all}]\n"
            "schedule: {name: nt-dm, base_shift: 3.0}\ncache: none\n",
            "one full-resolution stage",
        ),
        ("schedule: uniform\nstages: [{level: 0}]\ncache: taylorseer\n", "'taylorseer' does not work on U-Nets"),
    ],
)
def test_recipes_the_unet_path_cannot_run_are_refused(sd, yaml: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RecipeError, match=message):
        ralu_core.accelerate(sd, load_recipe_text("name: bad\nmodel: unet\n" + yaml))


def test_the_unet_cache_refuses_a_transformer_before_any_work(request) -> None:  # type: ignore[no-untyped-def]
    from ralu_flux.testing import make_flux_pipeline

    flux = make_flux_pipeline("tiny", seed=0)
    recipe = load_recipe_text(
        "name: wrong\nmodel: flux\nschedule: uniform\nstages: [{level: 0}]\ncache: deepcache-unet\n"
    )
    with pytest.raises(PluginError, match="deepcache-unet works on U-Net pipelines"):
        ralu_core.accelerate(flux, recipe)("a", height=64, width=64)
