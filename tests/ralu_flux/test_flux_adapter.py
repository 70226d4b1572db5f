"""The FLUX adapter end to end on a tiny random-weight FluxPipeline built offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ralu_core
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.testing import seeded_generators

CALL = {"max_sequence_length": 16, "output_type": "np"}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_baseline_reproduces_true_cfg_and_latent_output(pipe) -> None:  # type: ignore[no-untyped-def]
    kwargs = {
        "max_sequence_length": 16,
        "height": 64,
        "width": 64,
        "num_inference_steps": 3,
        "negative_prompt": "blurry",
        "true_cfg_scale": 2.5,
        "output_type": "latent",
    }
    expected = pipe("a red circle", generator=gen(1), **kwargs).images
    actual = ralu_core.accelerate(pipe, "flux-baseline")("a red circle", generator=gen(1), **kwargs).images
    assert actual.shape == expected.shape == (1, 16, 64)
    assert torch.allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("recipe", ["flux-baseline", "ralu-flux-7x"])
def test_one_negative_prompt_serves_a_batch_of_prompts_as_in_the_pipeline(pipe, recipe: str) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(pipe, recipe)
    kwargs = {**CALL, "height": 64, "width": 64, "negative_prompt": "", "true_cfg_scale": 4.0}
    steps = {"num_inference_steps": 4} if recipe == "flux-baseline" else {}
    batch = fast(["a red circle", "a blue square"], generator=seeded_generators(3, 4), **kwargs, **steps).images
    second = fast("a blue square", generator=seeded_generators(4), **kwargs, **steps).images
    assert batch.shape == (2, 64, 64, 3) and np.abs(batch[1:] - second).max() < 1e-5
    if recipe == "flux-baseline":
        plain = pipe(["a red circle", "a blue square"], generator=seeded_generators(3, 4), **kwargs, **steps).images
        assert np.abs(batch - plain).max() < 1e-5
    with pytest.raises(ValueError, match="got 3 negative prompts for 2 prompts"):
        fast(["a", "b"], **{**kwargs, "negative_prompt": ["x", "y", "z"]}, **steps)


def _registry() -> Registry:
    return Registry.collect(create_plugin_manager())


@pytest.mark.parametrize("recipe", ["ralu-flux-7x", "ralu-flux-7x-with-random-tokens"])
def test_the_same_latents_give_the_same_image_without_a_generator(pipe, recipe: str) -> None:  # type: ignore[no-untyped-def]
    """Transition noise (and random selection) is seeded from each image's latents when no generator is
    given; the global RNG's state does not matter."""
    text = ralu_core.recipes.dump_recipe(ralu_core.recipes.find_recipe("ralu-flux-7x", _registry()))
    if recipe.endswith("random-tokens"):
        text = text.replace("name: canny-edge", "name: random")
    fast = ralu_core.accelerate(pipe, ralu_core.load_recipe_text(text))
    latents = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    kwargs = {"height": 64, "width": 64, "max_sequence_length": 16, "output_type": "latent"}
    torch.manual_seed(1)
    first = fast(["a", "b"], latents=latents, **kwargs).images
    torch.manual_seed(2)
    again = fast(["a", "b"], latents=latents, **kwargs).images
    alone = fast("b", latents=latents[1:], **kwargs).images
    assert torch.equal(first, again) and (first[1] - alone[0]).abs().max() < 1e-5
    other = fast(["a", "b"], latents=latents.flip(0), **kwargs).images
    assert not torch.equal(other, first)


def test_num_images_per_prompt_with_one_generator_per_image(pipe) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(pipe, "ralu-flux-5x")
    images = fast(
        "a red circle", num_images_per_prompt=2, generator=seeded_generators(5, 6), height=64, width=64, **CALL
    ).images
    single = fast("a red circle", generator=seeded_generators(6), height=64, width=64, **CALL).images
    assert images.shape == (2, 64, 64, 3)
    assert np.abs(images[1:] - single).max() < 1e-5 and np.abs(images[0] - images[1]).max() > 1e-3


def record_image_ids(pipe):  # type: ignore[no-untyped-def]
    seen: list[torch.Tensor] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["img_ids"].clone()), with_kwargs=True
    )
    return seen, handle


def test_rope_positions_in_each_stage(pipe) -> None:  # type: ignore[no-untyped-def]
    seen, handle = record_image_ids(pipe)
    try:
        ralu_core.accelerate(pipe, "ralu-flux-7x")("a", generator=gen(0), height=128, width=96, **CALL)
    finally:
        handle.remove()
    assert len(seen) == 2 + 3 + 5
    rows, cols = 128 // 16, 96 // 16  # full-resolution token grid
    low = (rows // 2) * (cols // 2)
    stage1, stage2, stage3 = seen[0], seen[2], seen[5]
    assert stage1.shape == (low, 3)
    assert bool((stage1[:, 0] == 0).all())
    assert stage1[:, 1:].tolist() == [[r, c] for r in range(rows // 2) for c in range(cols // 2)]
    upsampled = int(low * 0.2)
    assert stage2.shape == (low - upsampled + 4 * upsampled, 3)
    frac = stage2[:, 1:] - stage2[:, 1:].floor()
    assert set(frac.reshape(-1).tolist()) == {0.0, 0.5}
    assert int((frac != 0).any(dim=1).sum()) == 3 * upsampled
    assert sorted(stage3[:, 1:].tolist()) == [[r, c] for r in range(rows) for c in range(cols)]


@pytest.mark.parametrize(
    ("recipe", "height", "message"),
    [
        ("ralu-flux-7x", 80, r"multiple of 32 .*height=80 \(nearest valid: 64 or 96\)"),
        ("flux-baseline", 72, r"multiple of 16 .*height=72 \(nearest valid: 64 or 80\)"),
        ("ralu-flux-7x", 64.5, r"height must be a whole number of pixels, got 64.5"),
        ("ralu-flux-7x", 2**20, r"height must be between 1 and 16384 pixels, got 1048576"),
        ("ralu-flux-7x", "64", r"height must be a whole number of pixels, got '64'"),
    ],
)
def test_a_size_that_does_not_fit_is_refused(pipe, recipe: str, height: int, message: str) -> None:  # type: ignore[no-untyped-def]
    calls: list[object] = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(a))
    try:
        with pytest.raises(ValueError, match=message):
            ralu_core.accelerate(pipe, recipe)("a", height=height, width=64, **CALL)
    finally:
        handle.remove()
    assert calls == []  # refused before encoding the prompt


@pytest.mark.parametrize("recipe", ["flux-baseline", "ralu-flux-7x"])
def test_an_integral_float_size_works_as_in_the_pipeline(pipe, recipe: str) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(pipe, recipe)
    as_float = fast("a", height=64.0, width=96.0, generator=seeded_generators(0), **CALL).images
    as_int = fast("a", height=64, width=96, generator=seeded_generators(0), **CALL).images
    assert as_float.shape == (1, 64, 96, 3) and np.array_equal(as_float, as_int)


def test_multi_stage_recipe_says_its_steps_are_fixed(pipe) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"'ralu-flux-7x' fixes its steps per stage \(2, 3, 5\)"):
        ralu_core.accelerate(pipe, "ralu-flux-7x")("a", num_inference_steps=28, height=64, width=64)


def test_unsupported_and_unknown_arguments(pipe) -> None:  # type: ignore[no-untyped-def]
    fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
    with pytest.raises(NotImplementedError, match="step-end callbacks"):
        fast("a", callback_on_step_end=lambda *a: {}, height=64, width=64)
    with pytest.raises(TypeError, match="unexpected keyword argument 'heigth'"):
        fast("a", heigth=64)


def test_return_dict_false_returns_a_tuple(pipe) -> None:  # type: ignore[no-untyped-def]
    out = ralu_core.accelerate(pipe, "ralu-flux-7x")(
        "a", return_dict=False, height=64, width=64, generator=gen(0), max_sequence_length=16
    )
    assert isinstance(out, tuple) and len(out) == 1 and out[0][0].size == (64, 64)


def test_bfloat16_pipeline_runs_and_keeps_half_offsets_exact() -> None:
    from ralu_flux.testing import make_flux_pipeline

    pipe = make_flux_pipeline("tiny", seed=0, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    seen, handle = record_image_ids(pipe)
    try:
        out = ralu_core.accelerate(pipe, "ralu-flux-7x")("a", generator=gen(0), height=64, width=64, **CALL).images
    finally:
        handle.remove()
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    assert all(ids.dtype == torch.float32 for ids in seen)


def test_ralu_core_and_ralu_flux_versions_move_in_lock_step() -> None:
    from importlib.metadata import requires, version

    assert version("ralu-core") == version("ralu-flux")
    assert f"ralu-core=={version('ralu-core')}" in requires("ralu-flux")


def schnell_style(pipe):  # type: ignore[no-untyped-def]
    """The tiny pipeline re-built like FLUX.1-schnell: no guidance embedding, static shift 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    transformer = FluxTransformer2DModel.from_config({**config, "guidance_embeds": False})
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    components = {**pipe.components, "transformer": transformer, "scheduler": scheduler}
    schnell = FluxPipeline(**components)
    schnell.set_progress_bar_config(disable=True)
    return schnell


def test_schnell_style_pipeline_baseline_and_ralu(pipe) -> None:  # type: ignore[no-untyped-def]
    schnell = schnell_style(pipe)
    kwargs = {**CALL, "height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 0.0}
    expected = schnell("a red circle", generator=gen(0), **kwargs).images
    actual = ralu_core.accelerate(schnell, "flux-baseline")("a red circle", generator=gen(0), **kwargs).images
    assert np.abs(actual - expected).max() < 1e-5
    kwargs.pop("num_inference_steps")
    image = ralu_core.accelerate(schnell, "ralu-flux-7x")("a red circle", generator=gen(0), **kwargs).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_an_impossible_selector_plan_fails_before_the_text_encoders_run(pipe) -> None:  # type: ignore[no-untyped-def]
    from typing import ClassVar

    from ralu_core import hookimpl
    from ralu_core.errors import PluginError
    from ralu_core.plugins import create_plugin_manager
    from ralu_core.strategies.selectors import RatioSelector

    class Greedy(RatioSelector):
        """Plans more tokens than there are."""

        name: ClassVar[str] = "greedy"

        def planned_count(self, num_candidates: int) -> int:
            return num_candidates + 1

    class Plugin:
        __name__ = "greedy-plugin"

        @hookimpl
        def ralu_register_token_selectors(self, register) -> None:  # type: ignore[no-untyped-def]
            register(Greedy)

    text = ralu_core.recipes.dump_recipe(ralu_core.recipes.find_recipe("ralu-flux-7x", _registry()))
    recipe = ralu_core.load_recipe_text(text.replace("name: canny-edge", "name: greedy"))
    fast = ralu_core.accelerate(pipe, recipe, plugin_manager=create_plugin_manager(plugins=[Plugin()]))
    calls: list[object] = []
    handle = pipe.text_encoder_2.register_forward_pre_hook(lambda *a: calls.append(a))
    try:
        with pytest.raises(
            PluginError, match=r"token selector 'greedy' \(plugin 'greedy-plugin'\) plans to pick 5 of 4"
        ):
            fast("a", height=64, width=64, **CALL)
    finally:
        handle.remove()
    assert calls == []


def test_a_per_step_plan_that_does_not_fit_the_call_is_refused_before_the_text_encoders(pipe) -> None:  # type: ignore[no-untyped-def]
    """FluxPipeline's default step count (28) is known before preparing: a dense reset step beyond it is refused
    before any model runs."""
    from ralu_core import RecipeError
    from ralu_core.recipes import load_recipe_text

    text = (
        "name: ras-open\nmodel: flux\nschedule: uniform\n"
        "stages:\n  - {level: 0, step_tokens: {name: ras-focus, dense_steps: [30]}}\n"
    )
    calls: list[int] = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(RecipeError, match=r"dense_steps \[30\] lie beyond this stage's 28 steps"):
            ralu_core.accelerate(pipe, load_recipe_text(text))("a", height=64, width=64)
    finally:
        handle.remove()
    assert calls == []


def test_misuse_of_a_flux_call_raises_ralu_errors_of_the_usual_kinds(pipe) -> None:  # type: ignore[no-untyped-def]
    from ralu_core import CallArgumentError, CallError, RaluError

    fast = ralu_core.accelerate(pipe, "ralu-flux-7x")
    with pytest.raises(CallArgumentError, match="unexpected keyword argument 'colour'") as unknown:
        fast("x", colour="red")
    with pytest.raises(CallError, match="fixes its steps per stage") as steps:
        fast("x", num_inference_steps=4)
    assert isinstance(unknown.value, TypeError) and isinstance(steps.value, ValueError)
    assert isinstance(unknown.value, RaluError) and isinstance(steps.value, RaluError)
