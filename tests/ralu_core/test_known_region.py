"""Inpainting in the core: an input per latent pixel at each token's level, and the kept region the engine resets."""

from __future__ import annotations

from typing import Any

import torch

from ralu_core.plugins import Registry
from ralu_core.recipes import load_recipe_text, resolve_recipe
from ralu_core.sampling.engine import SamplingEngine
from ralu_core.sampling.known_region import KnownRegion, TokenField
from ralu_core.sampling.tokens import (
    FULL,
    TokenGrid,
    TokenState,
    downsample_area,
    downsample_nearest,
    upsample_selected,
)
from ralu_core.strategies.base import StepInfo
from ralu_core.testing import ToyCall, ToyPipeline, seeded_generators

GRID = TokenGrid(rows=4, cols=6, channels=2, patch=2)


def test_a_field_gives_each_token_its_own_levels_value_in_any_order() -> None:
    values = torch.randn(2, GRID.num_tokens, GRID.token_dim, generator=torch.Generator().manual_seed(0))
    field = TokenField.of(values, GRID)
    half = downsample_nearest(TokenState.full_resolution(values, GRID))
    assert torch.equal(field.at(half), downsample_area(TokenState.full_resolution(values, GRID)).values)
    # Upsample a different token of each image: kept half tokens first, then the children, per image.
    mixed = upsample_selected(half, torch.tensor([[1], [4]])).state
    got = field.at(mixed)
    low = field.half
    assert low is not None
    for b in range(2):
        for n in range(mixed.num_tokens):
            row, col = (int(v) for v in mixed.cells[b, n])
            if int(mixed.levels[b, n]) == FULL:
                expected = values[b, row * GRID.cols + col]
            else:
                expected = low[b, (row // 2) * (GRID.cols // 2) + col // 2]
            assert torch.equal(got[b, n], expected), (b, n)


def test_the_kept_region_is_the_noised_image_in_the_latents_dtype() -> None:
    image, noise = torch.full((1, GRID.num_tokens, GRID.token_dim), 2.0), torch.ones(1, GRID.num_tokens, GRID.token_dim)
    mask = torch.zeros_like(image)
    mask[:, :12] = 1.0  # the first two rows of tokens are painted
    kept = KnownRegion.of(image, noise.to(torch.bfloat16), mask, GRID).at(
        TokenState.full_resolution(noise.to(torch.bfloat16), GRID)
    )
    values = torch.full_like(noise, 7.0).to(torch.bfloat16)
    out = kept.keep(values, torch.tensor(0.25))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[:, :12], values[:, :12])
    assert torch.equal(out[:, 12:], torch.full_like(out[:, 12:], 0.25 * 1.0 + 0.75 * 2.0))
    assert torch.equal(kept.keep(values, torch.tensor(0.0))[:, 12:], torch.full_like(out[:, 12:], 2.0))


RALU = """
name: toy-ralu
schedule: {name: nt-dm, base_shift: 3.0}
stages:
  - {steps: 2, end: 0.2, level: 1}
  - {steps: 2, end: 0.3, transition: nt-dm-upsample, selector: {name: canny-edge, ratio: 0.25}}
  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


class InpaintingToyCall(ToyCall):
    """The toy call with an input image and a mask that keeps the top half (whole half-resolution tokens)."""

    strength = 0.8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shape = (self.batch_size, self.grid.num_tokens, self.grid.token_dim)
        self.image = torch.randn(shape, generator=torch.Generator().manual_seed(9))
        self.mask = torch.ones(shape)
        self.mask[:, : self.grid.num_tokens // 2] = 0.0
        self.seen: list[tuple[TokenState, float]] = []
        self.noise: torch.Tensor | None = None

    def start_image(self) -> torch.Tensor:
        return self.image

    def initial_noise(self) -> torch.Tensor:
        self.noise = super().initial_noise()
        return self.noise

    def inpaint_mask(self) -> torch.Tensor:
        return self.mask

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        self.seen.append((state, float(sigma)))
        return super().predict(state, sigma, active, step=step)


def test_every_state_the_model_sees_holds_the_image_noised_to_its_sigma(toy_pm: Any) -> None:
    """After every step and after every resolution change, not only where the pipeline's own loop resets it."""
    runtime = resolve_recipe(load_recipe_text(RALU), Registry.collect(toy_pm))
    call = InpaintingToyCall(ToyPipeline(), 64, 96, 2, seeded_generators(0, 1), None)
    final = SamplingEngine(runtime).run(call)
    assert call.noise is not None
    region = KnownRegion.of(call.image, call.noise, call.mask, call.grid)
    counts = [state.num_tokens for state, _ in call.seen]
    assert len(set(counts)) == 3, f"expected three token sets, saw {counts}"
    for state, sigma in call.seen:
        kept = region.at(state)
        where = kept.mask == 0
        expected = sigma * kept.noise + (1 - sigma) * kept.image
        assert torch.allclose(state.values[where], expected[where], atol=1e-6), (state.num_tokens, sigma)
    top = call.mask[0, :, 0] == 0
    assert torch.equal(final.values[:, top], call.image[:, top])


def test_a_grid_without_a_half_level_still_gives_full_tokens() -> None:
    grid = TokenGrid(rows=3, cols=3, channels=1, patch=2)
    values = torch.randn(1, grid.num_tokens, grid.token_dim)
    field = TokenField.of(values, grid)
    assert field.half is None
    assert torch.equal(field.at(TokenState.full_resolution(values, grid)), values)
