"""Image-to-image in the core: where each kind of schedule starts from the input image, and the first state."""

from __future__ import annotations

import pytest
import torch

from ralu_core.errors import CallError
from ralu_core.sampling.engine import noised_image
from ralu_core.sampling.ntdm import fixed_ntdm, rewind_start, stage_sigmas
from ralu_core.sampling.tokens import TokenGrid, TokenState, downsample_nearest
from ralu_core.strategies.base import ScheduleContext, StagePlanSpec
from ralu_core.strategies.schedules import NTDMSchedule, UniformSchedule


def shifted(steps: int) -> torch.Tensor:
    """A pipeline's own sigmas (shift 3, as FLUX's scheduler at this size): steps + 1 values ending at 0."""
    u = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    sigmas = 3 * u / (1 + 2 * u)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)


def context(strength: float | None, requested: int | None = None) -> ScheduleContext:
    return ScheduleContext(
        requested_steps=requested, default_steps=28, default_shift=3.0, pipeline_sigmas=shifted, strength=strength
    )


@pytest.mark.parametrize(("steps", "strength", "skipped"), [(28, 0.6, 11), (10, 0.35, 6), (10, 1.0, 0), (50, 0.8, 10)])
def test_a_baseline_skips_the_steps_diffusers_img2img_skips(steps: int, strength: float, skipped: int) -> None:
    uniform = UniformSchedule(UniformSchedule.Config())
    stages = [StagePlanSpec(steps=None, end=1.0)]
    plan = uniform.plan(stages, context(strength, requested=steps))
    assert torch.equal(plan.sigmas[0], shifted(steps)[skipped:])  # diffusers: int(steps - steps * strength)
    assert uniform.planned_steps(stages, steps, strength) == (steps - skipped,)
    with pytest.raises(CallError, match=r"strength must lie in \(0, 1\]"):
        uniform.plan(stages, context(0.0, requested=steps))


def test_ralu_lays_its_stages_over_what_strength_leaves_keeping_steps_and_rewinds() -> None:
    steps, ends, shifts, c = [2, 3, 5], [0.3, 0.45, 1.0], [1.5, 2.0, 3.0], 0.2
    schedule = NTDMSchedule(NTDMSchedule.Config(shifts=shifts, c=c))
    stages = [StagePlanSpec(steps=n, end=e) for n, e in zip(steps, ends, strict=True)]
    start_sigma = float(shifted(28)[11])  # where the pipeline's own img2img starts at 28 steps and strength 0.6
    plan = schedule.plan(stages, context(0.6))
    assert plan.steps == (2, 3, 5)
    assert plan.sigmas[0][0].item() == pytest.approx(start_sigma, rel=1e-6)
    t0 = 1.0 - start_sigma
    solution = fixed_ntdm(steps, ends, 3.0, shifts, c).starting_at(t0)
    assert solution.ends == pytest.approx((t0 + (1 - t0) * 0.3, t0 + (1 - t0) * 0.45, 1.0))
    assert solution.starts == pytest.approx((t0, rewind_start(solution.ends[0], c), rewind_start(solution.ends[1], c)))
    for stage, sigmas in zip(solution.stages(), plan.sigmas, strict=True):
        expected = torch.tensor(stage_sigmas(stage.start, stage.end, stage.steps, stage.shift), dtype=torch.float32)
        assert torch.equal(sigmas, expected)
    assert schedule.plan(stages, context(None)).sigmas[0][0].item() == 1.0  # from noise, as before


def test_the_first_state_mixes_noise_and_image_as_flow_matching_does() -> None:
    grid = TokenGrid(rows=4, cols=6, channels=2, patch=2)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, grid.num_tokens, grid.token_dim, generator=generator)
    image = torch.randn(2, grid.num_tokens, grid.token_dim, generator=generator)
    sigma = torch.tensor([0.7])
    full = noised_image(TokenState.full_resolution(noise, grid), image, grid, sigma)
    assert torch.equal(full.values, 0.7 * noise + (1.0 - 0.7) * image)
    half = noised_image(downsample_nearest(TokenState.full_resolution(noise, grid)), image, grid, sigma)
    low_noise = downsample_nearest(TokenState.full_resolution(noise, grid)).values
    # The image's first token at half resolution: the mean of its 2 x 2 block of latent pixels, per channel.
    pixels = image.reshape(2, grid.rows, grid.cols, grid.channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    pixels = pixels.reshape(2, grid.channels, grid.rows * 2, grid.cols * 2)
    block = pixels[:, :, 0:2, 0:2].mean(dim=(2, 3))
    first = (half.values[:, 0] - 0.7 * low_noise[:, 0]) / 0.3
    torch.testing.assert_close(first.reshape(2, grid.channels, 2, 2)[:, :, 0, 0], block, rtol=0, atol=1e-5)
