"""Test helpers for ralu and its plugins: a toy model adapter and strategy contract tests.

The toy adapter drives a `ToyPipeline`, a deterministic stand-in for a diffusion transformer
(velocity depends on values, positions and sigma), so strategies can be tested through the real
engine in milliseconds without diffusers. `TokenSelectorContract` is a pytest mixin: subclass
it, implement `make_selector`, and your selector is checked against what the engine relies on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F

from ralu_core.measurement.flops import FlopCount
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.pipelines.adapter import check_image_size
from ralu_core.plugins.hookspecs import RegisterAdapter, hookimpl
from ralu_core.sampling.contract import BoundCall, ModelAdapter, ModelCall, ProgressBar
from ralu_core.sampling.randomness import GeneratorArg, per_image_generators, randn
from ralu_core.sampling.tokens import TokenGrid, TokenState, downsample_nearest, render_latent
from ralu_core.strategies.base import SelectionRequest, StageInfo, StepInfo, TokenSelector
from ralu_core.strategies.selectors import RatioSelector


@attrs.frozen(kw_only=True)
class ToyPipeline:
    """Geometry of a pretend pipeline: `pixels` image pixels per latent pixel, `patch` per token."""

    channels: int = 4
    patch: int = 2
    pixels: int = 4
    shift: float = 3.0
    default_steps: int = 8


@attrs.frozen(kw_only=True)
class ToyOutput:
    images: Any


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass


class ToyCall(ModelCall):
    """A generation call of the toy pipeline; records the positions each `predict` saw."""

    def __init__(
        self,
        pipe: ToyPipeline,
        height: int,
        width: int,
        batch_size: int,
        generator: GeneratorArg,
        num_inference_steps: int | None,
        output_type: str = "pt",
    ) -> None:
        self.pipe = pipe
        self.output_type = output_type
        unit = pipe.pixels * pipe.patch
        self.grid = TokenGrid(rows=height // unit, cols=width // unit, channels=pipe.channels, patch=pipe.patch)
        self.batch_size = batch_size
        self.generator = generator
        self.requested_steps = num_inference_steps
        self.default_steps = pipe.default_steps
        self.default_shift = pipe.shift
        self.seen_positions: list[torch.Tensor] = []
        self.stages_begun: list[StageInfo] = []
        self.steps_seen: list[StepInfo | None] = []

    def begin_stage(self, stage: StageInfo) -> None:
        self.stages_begun.append(stage)

    def initial_noise(self) -> torch.Tensor:
        shape = (self.batch_size, self.grid.num_tokens, self.grid.token_dim)
        return randn(shape, self.generator, device=torch.device("cpu"), dtype=torch.float32)

    def pipeline_sigmas(self, steps: int) -> torch.Tensor:
        u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        h = self.pipe.shift
        return (h * u / (1 + (h - 1) * u)).to(torch.float32)

    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        positions = state.positions().float()
        values = state.values
        if active is not None:
            index = active[..., None]
            values = torch.gather(values, 1, index.expand(-1, -1, values.shape[-1]))
            positions = torch.gather(positions, 1, index.expand(-1, -1, 2))
        self.seen_positions.append(positions.clone())
        self.steps_seen.append(step)
        # A smooth "data" pattern that depends on where a token is, so positions matter.
        freq = torch.arange(1, values.shape[-1] + 1, dtype=torch.float32)
        data = torch.sin(positions[..., :1] * 0.7 * freq + positions[..., 1:] * 0.3 * freq)
        # A little dependence on the current values, so that the result depends on the sampling path
        # (different recipes give measurably different images, as with a real model).
        data = data + 0.3 * torch.tanh(values)
        sigma_f = float(sigma)
        return (values - data) / max(sigma_f, 1e-3) if sigma_f > 0 else values - data

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        rgb = torch.sigmoid(latent[:, :3].float() * 2)
        return F.interpolate(rgb, scale_factor=self.pipe.pixels, mode="nearest")

    def finish(self, state: TokenState) -> ToyOutput:
        """Tokens as they are (``"pt"``, the default), or decoded RGB images in [0, 1] as (B, H, W, 3) numpy
        (``"np"``), like a diffusers pipeline's numpy output."""
        if self.output_type == "np":
            return ToyOutput(images=self.decode(render_latent(state)).permute(0, 2, 3, 1).numpy())
        return ToyOutput(images=state.values)

    def progress_bar(self, total: int) -> AbstractContextManager[ProgressBar]:
        @contextmanager
        def bar() -> Iterator[ProgressBar]:
            yield _NullBar()

        return bar()


class ToyFlopsProfile(FlopsProfile):
    """FLOPs of the toy model: 2 * tokens^2 * dim (attention-like) plus 2 * tokens * dim^2 (linear)."""

    def __init__(self, pipe: ToyPipeline) -> None:
        self.pipe = pipe
        self.name = "toy"
        self.baseline_steps = pipe.default_steps
        self.text_tokens = 0

    def grid(self, height: int, width: int) -> TokenGrid:
        unit = self.pipe.pixels * self.pipe.patch
        check_image_size(height, width, unit * 2, "for the toy model")
        return TokenGrid(rows=height // unit, cols=width // unit, channels=self.pipe.channels, patch=self.pipe.patch)

    def forward(self, image_tokens: int, reuse: Any = None, attended_tokens: int | None = None) -> FlopCount:
        """A made-up cost (the toy model has no modules, so `reuse` hooks have nothing to skip)."""
        dim = self.pipe.channels * self.pipe.patch**2
        keys = image_tokens if attended_tokens is None else attended_tokens
        return FlopCount(linear=2 * image_tokens * dim * dim, attention=4 * image_tokens * keys * dim, other=0)

    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        return FlopCount(linear=latent_height * latent_width * 100, attention=0, other=0)


class ToyAdapter(ModelAdapter):
    """Model adapter for `ToyPipeline`, with the capabilities of counting FLOPs and an embedded model."""

    name: ClassVar[str] = "toy"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ToyPipeline",)
    architectures: ClassVar[tuple[str, ...]] = ("toy",)

    def __init__(self) -> None:
        self.calls: list[ToyCall] = []

    def supports(self, pipeline: Any) -> bool:
        return isinstance(pipeline, ToyPipeline)

    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        def bind(
            prompt: str | list[str] = "",
            *,
            height: int = 64,
            width: int = 64,
            generator: GeneratorArg = None,
            num_inference_steps: int | None = None,
            num_images_per_prompt: int = 1,
            output_type: str = "pt",
        ) -> BoundCall:
            check_image_size(height, width, pipeline.pixels * pipeline.patch * 2**coarsest_level, "for the toy model")
            batch = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
            per_image_generators(generator, batch)
            unit = pipeline.pixels * pipeline.patch
            grid = TokenGrid(rows=height // unit, cols=width // unit, channels=pipeline.channels, patch=pipeline.patch)

            def prepare() -> ToyCall:
                call = ToyCall(pipeline, height, width, batch, generator, num_inference_steps, output_type)
                self.calls.append(call)
                return call

            return BoundCall(
                denoiser=None,
                grid=grid,
                requested_steps=num_inference_steps,
                default_steps=pipeline.default_steps,
                prepare=prepare,
            )

        return bind(*args, **kwargs)

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        if str(source) != "toy":
            raise ValueError(f"the toy adapter only knows the architecture 'toy', not {source!r}")
        return ToyFlopsProfile(ToyPipeline())

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        return ToyFlopsProfile(pipeline)

    embedded_models: ClassVar[tuple[str, ...]] = ("toy",)

    def embedded_pipeline(self, name: str) -> Any:
        if name != "toy":
            raise KeyError(f"the toy adapter has no embedded model {name!r}")
        return ToyPipeline()

    def embedded_config(self, name: str, component: str) -> None:
        return None

    def embedded_note(self, name: str) -> str:
        return ""


class ToyPlugin:
    """Registers one shared `ToyAdapter` (so tests can inspect its calls)."""

    def __init__(self) -> None:
        self.adapter = ToyAdapter()

    @hookimpl
    def ralu_register_model_adapters(self, register: RegisterAdapter) -> None:
        register(self.adapter)

    @hookimpl
    def ralu_resolve_model_adapter(self, pipeline: Any) -> ModelAdapter | None:
        return self.adapter if self.adapter.supports(pipeline) else None


def seeded_generators(*seeds: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded: the diffusers way to make a batch reproducible."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


# --- selection requests for unit tests ----------------------------------------------------------


def half_resolution_request(
    clean_latent: torch.Tensor, *, patch: int = 2, pixels: int = 4, generator: GeneratorArg = None
) -> SelectionRequest:
    """A stage-1-end selection request whose clean estimate is the given half-res latent image
    (B, C, h, w): candidates are all its tokens; `decode` is the toy decoder (sigmoid, nearest)."""
    batch, channels, height, width = clean_latent.shape
    rows, cols = 2 * height // patch, 2 * width // patch
    grid = TokenGrid(rows=rows, cols=cols, channels=channels, patch=patch)
    full = F.interpolate(clean_latent, scale_factor=2, mode="nearest")
    values = full.reshape(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    state = downsample_nearest(TokenState.full_resolution(values.reshape(batch, rows * cols, -1), grid))
    toy = ToyCall(
        ToyPipeline(channels=channels, patch=patch, pixels=pixels),
        rows * patch * pixels,
        cols * patch * pixels,
        batch,
        generator,
        None,
    )
    candidates = torch.arange(state.num_tokens).expand(batch, -1)
    return SelectionRequest(
        state=state,
        candidates=candidates,
        clean_estimate=state.values,
        velocity=None,
        sigma=0.5,
        generator=generator,
        render=lambda v, level: render_latent(state, v, level),
        decode=toy.decode,
    )


class TokenSelectorContract:
    """pytest mixin: what the engine relies on from any token selector.

    Subclass in a test module (name it ``Test...``) and implement ``make_selector``.
    """

    def make_selector(self) -> TokenSelector:
        raise NotImplementedError

    def _request(self, seed: int = 0) -> SelectionRequest:
        torch.manual_seed(1234)
        latent = torch.randn(2, 4, 8, 12)
        return half_resolution_request(latent, generator=[torch.Generator().manual_seed(seed + i) for i in range(2)])

    def test_returns_planned_count_of_distinct_candidates(self) -> None:
        selector = self.make_selector()
        request = self._request()
        picks = selector.select(request)
        count = selector.planned_count(request.candidates.shape[1])
        assert picks.shape == (2, count)
        for row in picks:
            assert len(set(row.tolist())) == count
            assert int(row.min()) >= 0 and int(row.max()) < request.candidates.shape[1]

    def test_scores_one_per_candidate(self) -> None:
        """Asked about a strict subset of the tokens (as at a transition, where some are already full
        resolution), a selector answers for exactly those candidates; a ratio selector's scores are (B, M).
        A score tensor one column short would otherwise still rank, and its last candidate never be chosen."""
        selector = self.make_selector()
        full = self._request()
        request = attrs.evolve(full, candidates=full.candidates[:, 1::2].contiguous())
        shape = tuple(request.candidates.shape)
        if isinstance(selector, RatioSelector):
            for index, key in enumerate(selector.ranking(request)):
                assert tuple(key.shape) == shape, f"score {index} has shape {tuple(key.shape)}, expected (B, M) {shape}"
        picks = selector.select(request)
        assert tuple(picks.shape) == (shape[0], selector.planned_count(shape[1]))
        assert int(picks.min()) >= 0 and int(picks.max()) < shape[1]

    def test_same_generator_same_choice(self) -> None:
        selector = self.make_selector()
        assert torch.equal(selector.select(self._request(0)), selector.select(self._request(0)))

    def test_has_name_and_config(self) -> None:
        selector = self.make_selector()
        assert isinstance(selector.name, str) and selector.name
        assert attrs.has(type(selector.config))

    def test_does_not_modify_the_state(self) -> None:
        request = self._request()
        before = request.state.values.clone(), request.state.cells.clone()
        self.make_selector().select(request)
        assert torch.equal(request.state.values, before[0]) and torch.equal(request.state.cells, before[1])
