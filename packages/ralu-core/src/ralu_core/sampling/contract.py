"""The contract between the sampling core and a model: what an adapter must provide (`ModelAdapter`: say
which pipelines it drives, and `bind` a call's arguments without running any model into a `BoundCall`), and
what the engine samples with (`ModelCall`: `predict` on any set of tokens at mixed levels, `finish` into the
pipeline's own output), composed of `CallPart`s. Optional capabilities live with the diffusers base
(`ralu_core.pipelines.adapter`)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, ClassVar, Protocol

import attrs
import torch

from ralu_core.sampling.randomness import GeneratorArg
from ralu_core.sampling.tokens import TokenGrid, TokenState
from ralu_core.strategies.base import StageInfo, StepInfo


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...


class CallPart(Protocol):
    """A piece of machinery a prepared call is composed of (diffusers' cache hooks, RAS attention): what it
    changes while the call runs, what it drops when the token set changes, what memory it holds."""

    def running(self) -> AbstractContextManager[None]: ...

    def begin_stage(self, stage: StageInfo) -> None: ...

    def nbytes(self) -> int: ...


class ModelCall(abc.ABC):
    """One generation call, prepared: everything the engine needs, nothing model-specific leaks."""

    grid: TokenGrid
    batch_size: int
    generator: GeneratorArg
    requested_steps: int | None
    default_steps: int
    default_shift: float
    parts: tuple[CallPart, ...] = ()
    """What the call is composed of: entered around the run in order, told of each stage, measured."""
    strength: float | None = None
    """Image-to-image: how much of the schedule runs from `start_image` (diffusers' `strength`); None: the call
    starts from pure noise."""
    terminal_sigma: float | None = None
    """The last sigma before clean data that the pipeline's scheduler stretches its schedule to (diffusers'
    ``shift_terminal``: Qwen-Image's 0.02); None: no stretch."""

    def start_image(self) -> torch.Tensor | None:
        """Image-to-image: (B, N, D) full-resolution latents of the input image in raster token order, encoded as
        the pipeline encodes it (asked before `initial_noise`, in the pipeline's order of random draws); None
        where the call starts from noise."""
        return None

    def inpaint_mask(self) -> torch.Tensor | None:
        """Inpainting: (B, N, D) full-resolution mask in raster token order, 1 where the model paints and 0 where
        `start_image` is kept (fractions blend), applied after every step as diffusers' inpaint pipelines apply
        it (asked after `initial_noise`); None: every token is painted."""
        return None

    @abc.abstractmethod
    def initial_noise(self) -> torch.Tensor:
        """(B, N, D) full-resolution noise in raster token order, drawn as the pipeline would."""

    @abc.abstractmethod
    def pipeline_sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's own sigma schedule (steps + 1 values, float32) at full resolution."""

    @abc.abstractmethod
    def predict(
        self, state: TokenState, sigma: torch.Tensor, active: torch.Tensor | None, *, step: StepInfo | None = None
    ) -> torch.Tensor:
        """Velocity (guided, if the model uses CFG) for the active tokens (B, A) or all tokens. `step` says
        where the run is (for the model's cache hooks, which diffusers keys by step)."""

    @abc.abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latent image (any size) -> (B, 3, H, W) RGB in [0, 1], with the pipeline's VAE."""

    @abc.abstractmethod
    def finish(self, state: TokenState) -> Any:
        """Final full-resolution raster state -> the pipeline's own output (images, return_dict...)."""

    @abc.abstractmethod
    def progress_bar(self, total: int) -> AbstractContextManager[ProgressBar]:
        """A progress bar configured like the pipeline's own (``pipe.set_progress_bar_config``)."""

    def begin_stage(self, stage: StageInfo) -> None:
        """The token set changes: state that the parts keep per token is dropped."""
        for part in self.parts:
            part.begin_stage(stage)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Entered around the whole sampling loop: what the parts change on the pipeline while it runs is
        restored on exit (the last part first)."""
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.running())
            yield

    def token_cache_nbytes(self) -> int:
        """Memory of the token-level caches the call holds now (RAS's keys and values); 0 where none."""
        return sum(part.nbytes() for part in self.parts)


@attrs.frozen(kw_only=True)
class BoundCall:
    """A call's arguments, bound and checked like the pipeline would (sizes against the recipe's coarsest
    level, generators, unknown names), with nothing run: what the recipe's plan is checked against before
    the text encoders load. Exactly one of `prepare` and `run_pipeline` is set."""

    denoiser: Any
    """What block-level caches hook into (a DiT pipeline's ``transformer``)."""
    grid: TokenGrid | None = None
    """The full-resolution token grid; None where the pipeline runs its own sampler."""
    requested_steps: int | None = None
    default_steps: int | None = None
    """The step count the pipeline uses when the call gives none (required where ralu samples)."""
    strength: float | None = None
    """Image-to-image: the call's `strength` (what is left of the schedule); None: from noise."""
    prepare: Callable[[], ModelCall] | None = None
    """Encode the prompts, return the call the engine samples with."""
    run_pipeline: Callable[[], Any] | None = None
    """For pipelines ralu does not drive token by token (U-Nets): their own loop, caches attached."""

    def __attrs_post_init__(self) -> None:
        if (self.prepare is None) == (self.run_pipeline is None):
            raise TypeError("a BoundCall has either `prepare` (ralu samples) or `run_pipeline` (its own loop)")
        if self.prepare is not None and (self.grid is None or self.default_steps is None):
            raise TypeError("a BoundCall that ralu samples needs its token grid and the pipeline's default steps")

    @property
    def steps(self) -> int:
        """The steps the call asks for: its own, else the pipeline's default."""
        steps = self.requested_steps if self.requested_steps is not None else self.default_steps
        assert steps is not None, "only for a call that ralu samples"
        return steps


class ModelAdapter(abc.ABC):
    """Drives one family of diffusers pipelines (e.g. FluxPipeline). Required: `supports` and `bind`."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    variants_not_driven: ClassVar[Mapping[str, str]] = {}
    """Pipeline classes of the same model that the adapter does not drive yet -> what they add that it would have
    to follow (named in the refusal, so that a user knows why and what to use instead)."""

    @abc.abstractmethod
    def supports(self, pipeline: Any) -> bool:
        """Whether this adapter can drive `pipeline`."""

    @abc.abstractmethod
    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        """Bind and check a call's arguments (sizes against `coarsest_level`, generators, unknown names)
        without running any model."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
