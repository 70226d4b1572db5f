"""The engine through the toy adapter: stages, positions, determinism, batches, active subsets."""

from __future__ import annotations

import pytest
import torch

from ralu_core import accelerate
from ralu_core.recipes import load_recipe_text
from ralu_core.sampling.engine import euler_step
from ralu_core.testing import ToyPipeline, seeded_generators

RALU = """
name: toy-ralu
schedule: {name: nt-dm, base_shift: 3.0}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 3, end: 0.3, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.25}}
  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


@pytest.fixture
def fast(toy_pm):  # type: ignore[no-untyped-def]
    return accelerate(ToyPipeline(), load_recipe_text(RALU), plugin_manager=toy_pm)


def test_positions_seen_by_the_model_in_each_stage(fast, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    fast("x", height=64, width=96, generator=seeded_generators(0))
    seen = toy_plugin.adapter.calls[0].seen_positions
    assert len(seen) == 7
    rows, cols = 64 // 8, 96 // 8
    stage1 = seen[0][0]
    assert stage1.shape == (rows // 2 * cols // 2, 2)
    assert bool((stage1 == stage1.round()).all()) and float(stage1[:, 1].max()) == cols // 2 - 1
    stage2 = seen[2][0]
    low = rows // 2 * cols // 2
    upsampled = int(low * 0.25)
    assert stage2.shape[0] == low - upsampled + 4 * upsampled
    fractional = (stage2 != stage2.round()).any(dim=1)
    assert int(fractional.sum()) == 3 * upsampled  # of each 4 children, 3 have a half offset
    stage3 = seen[5][0]
    assert stage3.shape == (rows * cols, 2) and bool((stage3 == stage3.round()).all())
    assert float(stage3[:, 0].max()) == rows - 1


def test_a_seed_reproduces_and_another_differs(fast) -> None:  # type: ignore[no-untyped-def]
    a = fast("x", height=64, width=64, generator=seeded_generators(3)).images
    b = fast("x", height=64, width=64, generator=seeded_generators(3)).images
    c = fast("x", height=64, width=64, generator=seeded_generators(4)).images
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_batch_equals_single_calls(fast) -> None:  # type: ignore[no-untyped-def]
    batch = fast(["a", "b"], height=64, width=64, generator=seeded_generators(5, 6)).images
    first = fast("a", height=64, width=64, generator=seeded_generators(5)).images
    second = fast("b", height=64, width=64, generator=seeded_generators(6)).images
    assert torch.allclose(batch, torch.cat([first, second]), atol=1e-6)


def test_generator_count_must_match_batch(fast, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="got 3 generators for an effective batch of 2"):
        fast(["a", "b"], height=64, width=64, generator=seeded_generators(1, 2, 3))


def test_size_that_does_not_divide_names_nearest_valid_sizes(fast) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"multiple of 16 .*height=72 \(nearest valid: 64 or 80\)"):
        fast("x", height=72, width=64)


def test_step_tokens_compute_a_subset_after_the_first_step(toy_pm, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    recipe = load_recipe_text(
        "name: sparse\nschedule: uniform\nstages:\n"
        "  - {steps: 4, step_tokens: {name: random, ratio: 0.5}, inactive: drop}\n"
    )
    out = accelerate(ToyPipeline(), recipe, plugin_manager=toy_pm)(
        "x", height=64, width=64, generator=seeded_generators(0)
    )
    seen = toy_plugin.adapter.calls[0].seen_positions
    assert [p.shape[1] for p in seen] == [64, 32, 32, 32]
    assert torch.isfinite(out.images).all()


def test_uniform_schedule_honours_num_inference_steps(toy_pm, toy_plugin) -> None:  # type: ignore[no-untyped-def]
    recipe = load_recipe_text("name: base\nschedule: uniform\nstages:\n  - {level: 0}\n")
    fast = accelerate(ToyPipeline(), recipe, plugin_manager=toy_pm)
    fast("x", height=64, width=64, num_inference_steps=5)
    fast("x", height=64, width=64)
    assert [len(c.seen_positions) for c in toy_plugin.adapter.calls] == [5, ToyPipeline().default_steps]


def test_euler_step_matches_the_scheduler_arithmetic() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    v = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    s, s_next = torch.tensor(0.8), torch.tensor(0.6)
    out = euler_step(x, v, s, s_next)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (x.to(torch.float32) + (s_next - s) * v).to(torch.bfloat16))


def test_the_feature_cache_hears_of_every_new_token_set_before_it_is_used() -> None:
    """A cache must never reuse features across token sets: the engine calls `begin_stage` before each
    stage's first step, with that stage's token count."""
    from collections.abc import Callable
    from typing import ClassVar

    from ralu_core import hookimpl
    from ralu_core.plugins import create_plugin_manager
    from ralu_core.strategies.base import FeatureCache, StageInfo, StepInfo
    from ralu_core.testing import ToyPlugin

    events: list[tuple[str, int, int]] = []

    class Recording(FeatureCache):
        name: ClassVar[str] = "recording"

        def begin_stage(self, stage: StageInfo) -> None:
            events.append(("stage", stage.index, stage.num_tokens))

        def predict(self, step: StepInfo, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
            value = compute()
            events.append(("step", step.stage, value.shape[1]))
            return value

    class Plugin:
        @hookimpl
        def ralu_register_feature_caches(self, register) -> None:  # type: ignore[no-untyped-def]
            register(Recording)

    pm = create_plugin_manager(plugins=[ToyPlugin(), Plugin()])
    recipe = load_recipe_text(RALU + "cache: recording\n")
    accelerate(ToyPipeline(), recipe, plugin_manager=pm)("x", height=64, width=64, generator=seeded_generators(0))
    # 8 x 8 tokens: 16 at half resolution; 4 of them upsampled into 16 children; then all 64.
    expected = [("stage", 0, 16), *[("step", 0, 16)] * 2, ("stage", 1, 28), *[("step", 1, 28)] * 3]
    assert events == [*expected, ("stage", 2, 64), *[("step", 2, 64)] * 2]


def test_misuse_of_a_call_raises_ralu_errors_that_stay_value_errors(fast) -> None:  # type: ignore[no-untyped-def]
    """Users catch `ralu_core.RaluError` (everything ralu refuses) or, as with diffusers, ValueError."""
    from ralu_core import CallError, RaluError

    with pytest.raises(CallError, match="multiple of") as size:
        fast("x", height=60, width=64, generator=seeded_generators(0))
    with pytest.raises(CallError) as generators:
        fast(["x", "y"], height=64, width=64, generator=seeded_generators(0))
    for caught in (size, generators):
        assert isinstance(caught.value, RaluError) and isinstance(caught.value, ValueError)
