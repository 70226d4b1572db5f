"""The adapter contract: the only place where model knowledge meets the engine.

Required of every adapter (`ModelAdapter`): say which pipelines it drives, and `bind` a call's arguments
without running any model: the token grid, the steps, the denoiser caches hook into, and a `prepare`
that encodes the prompts and returns the `ModelCall` the engine samples with (`predict` on any set of
tokens at mixed levels, `finish` into the pipeline's own output). Everything else is an optional
capability, a small protocol an adapter implements where it has it: counting FLOPs, embedded models,
RAS attention, checks before loading, block declarations for caches, limits on recipes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs
import torch

from ralu_core.errors import CallError, RaluError, RecipeError
from ralu_core.flops import FlopCount
from ralu_core.randomness import GeneratorArg
from ralu_core.runtime import RecipeRuntime
from ralu_core.strategies.base import AdapterFacts, ModelBlocks, StageInfo, StepInfo
from ralu_core.tokens import TokenGrid, TokenState

ConfigReader = Callable[[str], Mapping[str, Any] | None]
"""Reads a stored pipeline component's config (``"vae"``, ``"transformer"``), None where unavailable."""


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

    @abc.abstractmethod
    def supports(self, pipeline: Any) -> bool:
        """Whether this adapter can drive `pipeline`."""

    @abc.abstractmethod
    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        """Bind and check a call's arguments (sizes against `coarsest_level`, generators, unknown names)
        without running any model."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# --- optional capabilities ---------------------------------------------------------------------------


class FlopsProfile(abc.ABC):
    """A full-size architecture whose FLOPs can be counted without weights (meta device)."""

    name: str
    baseline_steps: int
    text_tokens: int

    @abc.abstractmethod
    def grid(self, height: int, width: int) -> TokenGrid:
        """The full-resolution token grid for an image size (validated like a call)."""

    @abc.abstractmethod
    def forward(
        self,
        image_tokens: int,
        reuse: Callable[[Any], AbstractContextManager[None]] | None = None,
        attended_tokens: int | None = None,
    ) -> FlopCount:
        """One transformer evaluation on `image_tokens` image tokens (batch 1, text tokens included). `reuse`,
        given the meta-device model, installs a cache's hooks for a step that reuses part of the work; the
        count is then of what that step really runs. `attended_tokens`: how many image tokens its attention
        sees (a RAS sparse step: the inactive ones through cached keys and values); None: `image_tokens`."""

    @abc.abstractmethod
    def decode(self, latent_height: int, latent_width: int) -> FlopCount:
        """One VAE decode of a latent of this size (batch 1)."""


@runtime_checkable
class CountsFlops(Protocol):
    """Counts FLOPs of full-size architectures on the meta device (``ralu flops``, ``ralu bench``)."""

    architectures: ClassVar[tuple[str, ...]]

    def flops_profile(self, source: str | Path) -> FlopsProfile:
        """Counting profile for a known architecture name or a local pipeline directory."""
        ...

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        """Counting profile for a loaded pipeline's architecture, for calls made with `call_kwargs`."""
        ...


@runtime_checkable
class EmbedsModels(Protocol):
    """Builds named pipelines without weights (``ralu generate --model NAME``; demos, tests, CPU benchmarks)."""

    embedded_models: ClassVar[tuple[str, ...]]

    def embedded_pipeline(self, name: str) -> Any: ...

    def embedded_config(self, name: str, component: str) -> Mapping[str, Any] | None:
        """The config of an embedded pipeline's component, so that sizes are checked before it is built."""
        ...

    def embedded_note(self, name: str) -> str:
        """What a user should know about an embedded model's images."""
        ...


@runtime_checkable
class CachedAttention(Protocol):
    """Keeps the keys and values of the tokens a sparse step skips (RAS attention, ``inactive: kv-cache``)."""

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        """What keeps this pipeline from RAS attention now (e.g. attention processors the adapter does not
        know), checked before the text encoders run; empty: fine."""
        ...


@runtime_checkable
class ChecksBeforeLoading(Protocol):
    """What the CLI can refuse from a stored pipeline's configs, before any weights load."""

    def prompt_token_limit(self, call_kwargs: Mapping[str, Any]) -> tuple[str, int] | None:
        """(tokenizer component, most tokens) the main text encoder reads for a call with these arguments."""
        ...

    def size_rule_from_configs(self, read_config: ConfigReader, coarsest_level: int) -> tuple[int, str] | None:
        """(multiple, why): what every image side must be a multiple of, read from the component configs."""
        ...


@runtime_checkable
class DescribesBlocks(Protocol):
    """Declares its model's blocks for caches that reach inside them (TaylorSeer, ToCa, first-block)."""

    blocks: ClassVar[ModelBlocks]


@runtime_checkable
class LimitsRecipes(Protocol):
    """Accepts only some recipes (a U-Net pipeline's own sampler: one stage, its own schedule)."""

    def check_runtime(self, runtime: RecipeRuntime) -> list[str]:
        """What keeps `runtime` from running on this adapter's pipelines, as recipe problems (empty: fine)."""
        ...


@runtime_checkable
class RecommendsRecipes(Protocol):
    """Names the recipes the CLI uses for its pipelines when none are given: the baseline (exactly the pipeline)
    and the default accelerated recipe."""

    baseline_recipe: ClassVar[str]
    default_recipe: ClassVar[str]


def embedded_models(adapter: ModelAdapter) -> tuple[str, ...]:
    """The names of the pipelines `adapter` builds without weights (none where it has no such capability)."""
    embeds = adapter if isinstance(adapter, EmbedsModels) else None
    return tuple(embeds.embedded_models) if embeds else ()


def architectures(adapter: ModelAdapter) -> tuple[str, ...]:
    """The full-size architectures `adapter` counts by name (none where it counts no FLOPs)."""
    counts = adapter if isinstance(adapter, CountsFlops) else None
    return tuple(counts.architectures) if counts else ()


def counting(adapter: ModelAdapter) -> CountsFlops:
    """`adapter` as a FLOPs counter; a RaluError where it counts none."""
    counts = adapter if isinstance(adapter, CountsFlops) else None
    if counts is None:
        raise RaluError(f"the {adapter.name!r} adapter counts no FLOPs; ralu counts those of the DiT adapters")
    return counts


def adapter_facts(adapter: ModelAdapter) -> AdapterFacts:
    """What strategies may check a recipe against: the adapter's name and declared blocks."""
    described = adapter if isinstance(adapter, DescribesBlocks) else None
    return AdapterFacts(name=adapter.name, blocks=described.blocks if described else ModelBlocks())


def is_diffusers_pipeline(pipeline: Any, class_names: tuple[str, ...]) -> bool:
    """Whether `pipeline` is an instance of one of diffusers' pipeline classes named here (or a subclass)."""
    import diffusers

    return any(isinstance(pipeline, getattr(diffusers, name)) for name in class_names)


MAX_IMAGE_SIDE = 16384
"""Larger sides are refused: no DiT runs there, and position arithmetic overflows long before."""


def image_side(label: str, value: Any) -> int:
    """A side as the pipelines take it: an int, or a float with an integral value (``64.0``)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CallError(f"{label} must be a whole number of pixels, got {value!r}")
    if not 0 < value <= MAX_IMAGE_SIDE:
        raise CallError(f"{label} must be between 1 and {MAX_IMAGE_SIDE} pixels, got {value}")
    return value


def check_image_size(height: Any, width: Any, multiple: int, why: str) -> tuple[int, int]:
    """The size as ints; refuses a size that is not a whole number of pixels, is out of range, or does not
    divide, naming the nearest valid sizes for each side."""
    height, width = image_side("height", height), image_side("width", width)
    problems = []
    for label, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            lower = max(multiple, value // multiple * multiple)
            upper = lower + multiple if value % multiple else lower
            options = sorted({lower, upper}) if value > 0 else [multiple]
            problems.append(f"{label}={value} (nearest valid: {' or '.join(str(v) for v in options)})")
    if problems:
        raise CallError(f"image size must be a multiple of {multiple} pixels {why}; got {', '.join(problems)}")
    return height, width


def iter_chunks(indices: torch.Tensor) -> Iterator[torch.Tensor]:
    """Group batch rows whose token positions are identical (they can share one model call)."""
    remaining = list(range(indices.shape[0]))
    while remaining:
        first = remaining[0]
        same = [i for i in remaining if torch.equal(indices[i], indices[first])]
        remaining = [i for i in remaining if i not in same]
        yield torch.tensor(same, dtype=torch.long)


def bind_to_adapter(adapter: ModelAdapter, runtime: RecipeRuntime) -> None:
    """Check a resolved recipe against the adapter that will run or count it (RecipeError listing every
    problem), then tell its caches which adapter that is."""
    problems = adapter_problems(adapter, runtime)
    if problems:
        raise RecipeError(runtime.recipe.name, problems)
    facts = adapter_facts(adapter)
    for slot in runtime.caches:
        slot.cache.use_model(facts)


def adapter_problems(adapter: ModelAdapter, runtime: RecipeRuntime) -> list[str]:
    """What keeps a resolved recipe from running on this adapter's pipelines, known without a pipeline (so
    `ralu recipes validate` finds it for a recipe that names its model, and `accelerate` for any)."""
    limits = adapter if isinstance(adapter, LimitsRecipes) else None
    problems = list(limits.check_runtime(runtime)) if limits else []
    if runtime.cached_attention and not isinstance(adapter, CachedAttention):
        stages = [str(i) for i, stage in enumerate(runtime.stages) if stage.cached_attention]
        problems.append(
            f"$.stages[{', '.join(stages)}].inactive: the {adapter.name!r} adapter cannot keep the keys and values of "
            "skipped tokens (RAS attention, the default for a stage with step_tokens); set `inactive: drop`"
        )
    facts = adapter_facts(adapter)
    for index, slot in enumerate(runtime.caches):
        problems += [f"$.cache[{index}]: {problem}" for problem in slot.cache.check_adapter(facts)]
    return problems
