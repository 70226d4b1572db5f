"""What a model adapter must provide: the only place where model knowledge lives.

An adapter resolves a pipeline, validates a call's arguments cheaply (before any model runs),
and then produces a `ModelCall`: prompts encoded, noise drawn the pipeline's way, and a
`predict` that evaluates the transformer on any set of tokens at mixed levels. It also knows
the full-size architectures it supports, for FLOPs counting on the meta device.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ralu_core.errors import CallError, RecipeError
from ralu_core.flops import FlopCount
from ralu_core.randomness import GeneratorArg
from ralu_core.runtime import RecipeRuntime
from ralu_core.strategies.base import BlockFeatures, StageInfo, StepInfo, TokenwiseFeatures
from ralu_core.tokens import TokenGrid, TokenState

ConfigReader = Callable[[str], Mapping[str, Any] | None]
"""Reads a stored pipeline component's config (``"vae"``, ``"transformer"``), None where unavailable."""


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...


class ModelCall(abc.ABC):
    """One generation call, prepared: everything the engine needs, nothing model-specific leaks."""

    grid: TokenGrid
    batch_size: int
    generator: GeneratorArg
    requested_steps: int | None
    default_steps: int
    default_shift: float

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

    def begin_stage(self, stage: StageInfo) -> None:  # noqa: B027 - optional override, not abstract
        """The token set changes: state that hooks on the model keep per token must be dropped."""

    def running(self) -> AbstractContextManager[None]:
        """Entered around the whole sampling loop: what the call changes on the pipeline while it runs
        (e.g. the pipeline's current timestep, the state of its cache hooks) is restored on exit."""
        return nullcontext()

    def token_cache_nbytes(self) -> int:
        """Memory of the token-level caches the call holds now (RAS's keys and values); 0 where none."""
        return 0

    @abc.abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latent image (any size) -> (B, 3, H, W) RGB in [0, 1], with the pipeline's VAE."""

    @abc.abstractmethod
    def finish(self, state: TokenState) -> Any:
        """Final full-resolution raster state -> the pipeline's own output (images, return_dict...)."""

    @abc.abstractmethod
    def progress_bar(self, total: int) -> AbstractContextManager[ProgressBar]:
        """A progress bar configured like the pipeline's own (``pipe.set_progress_bar_config``)."""


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


class ModelAdapter(abc.ABC):
    """Drives one family of diffusers pipelines (e.g. FluxPipeline)."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    architectures: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def supports(self, pipeline: Any) -> bool:
        """Whether this adapter can drive `pipeline`."""

    @abc.abstractmethod
    def prepare(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ModelCall:
        """Validate the call's arguments (sizes against `coarsest_level`, generators, unknown names)
        before any expensive work, then encode prompts and return the prepared call."""

    def default_steps(self, pipeline: Any) -> int | None:
        """The step count the pipeline uses when a call gives none, if known without preparing a call (so
        per-step plans are checked before the text encoders run)."""
        return None

    def denoiser(self, pipeline: Any) -> Any:
        """What block-level caches hook into (a DiT pipeline's ``transformer``); None if nothing."""
        return None

    def prompt_token_limit(self, call_kwargs: Mapping[str, Any]) -> tuple[str, int] | None:
        """(tokenizer component, most tokens) the main text encoder reads for a call with these arguments,
        so that longer prompts are refused before loading; None where there is no such limit."""
        return None

    cached_attention: ClassVar[bool] = False
    """Whether its calls keep the keys and values of the tokens a sparse step skips (RAS attention, a
    stage's ``inactive: kv-cache``)."""

    def cached_attention_problems(self, pipeline: Any) -> list[str]:
        """What keeps this pipeline from RAS attention now (e.g. attention processors the adapter does not
        know), checked before the text encoders run; empty: fine."""
        return []

    last_block_returns_text: ClassVar[bool] = True
    """Whether the denoiser's last block returns the text stream as well as the image stream (False for SD3,
    whose last joint block is `context_pre_only`): caches that add a residual to both streams need it, and
    recipes are checked against this without loading anything."""

    block_features: ClassVar[Mapping[str, BlockFeatures]] = {}
    """Per transformer block class name: what feature-level caches (TaylorSeer) may forecast in it. Empty:
    such caches are refused on this adapter's pipelines."""

    token_features: ClassVar[Mapping[str, TokenwiseFeatures]] = {}
    """Per transformer block class name: what token-wise caches (ToCa) may reuse per token in it. Empty:
    such caches are refused on this adapter's pipelines."""

    runs_own_sampler: ClassVar[bool] = False
    """True for pipelines ralu does not drive token by token (U-Nets): the pipeline's own loop runs with the
    recipe's caches attached (`call_pipeline`), and `check_runtime` limits the recipes it accepts."""

    def check_runtime(self, runtime: RecipeRuntime) -> list[str]:
        """What keeps `runtime` from running on this adapter's pipelines, as recipe problems (empty: fine)."""
        return []

    def call_pipeline(self, pipeline: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the pipeline's own sampler (adapters that set `runs_own_sampler`)."""
        raise NotImplementedError(f"the {self.name!r} adapter drives its pipelines token by token")

    def plan_grid(
        self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TokenGrid | None:
        """The token grid a call with these arguments will use, found without running any model, so the
        engine can check the recipe's token plan before the text encoders run. None if unknown (the plan
        is then checked after `prepare`, still before the first transformer call)."""
        return None

    @abc.abstractmethod
    def flops_profile(self, source: str | Path) -> FlopsProfile:
        """Counting profile for a known architecture name or a local pipeline directory."""

    def pipeline_flops_profile(self, pipeline: Any, call_kwargs: dict[str, Any]) -> FlopsProfile:
        """Counting profile for a loaded pipeline's architecture, for calls made with `call_kwargs`
        (``ralu bench`` reports FLOPs ratios for exactly what it timed)."""
        raise NotImplementedError(f"the {self.name!r} adapter cannot count FLOPs of a loaded pipeline")

    def size_rule_from_configs(self, read_config: ConfigReader, coarsest_level: int) -> tuple[int, str] | None:
        """(multiple, why): what every image side of a stored pipeline must be a multiple of, read from its
        component configs (``read_config("vae")``, no weights), so that a bad size is refused before a
        model loads. None where the configs do not tell (the call checks the size anyway)."""
        return None

    embedded_models: ClassVar[tuple[str, ...]] = ()
    """Names of pipelines this adapter can build without weights (``ralu generate --model NAME``)."""

    def embedded_pipeline(self, name: str) -> Any:
        """Build an embedded pipeline by name (offline; for demos, tests and CPU benchmarks)."""
        raise KeyError(f"the {self.name!r} adapter has no embedded model {name!r}")

    def embedded_config(self, name: str, component: str) -> Mapping[str, Any] | None:
        """The config of an embedded pipeline's component (as a stored pipeline's ``config.json`` would
        give it), so that its sizes are checked before it is built; None where unknown."""
        return None

    def embedded_note(self, name: str) -> str:
        """What a user should know about an embedded model's images."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


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
    for slot in runtime.caches:
        slot.cache.use_model(adapter)


def adapter_problems(adapter: ModelAdapter, runtime: RecipeRuntime) -> list[str]:
    """What keeps a resolved recipe from running on this adapter's pipelines, known without a pipeline (so
    `ralu recipes validate` finds it for a recipe that names its model, and `accelerate` for any)."""
    problems = list(adapter.check_runtime(runtime))
    if runtime.cached_attention and not adapter.cached_attention:
        stages = [str(i) for i, stage in enumerate(runtime.stages) if stage.cached_attention]
        problems.append(
            f"$.stages[{', '.join(stages)}].inactive: the {adapter.name!r} adapter cannot keep the keys and values of "
            "skipped tokens (RAS attention, the default for a stage with step_tokens); set `inactive: drop`"
        )
    for index, slot in enumerate(runtime.caches):
        problems += [f"$.cache[{index}]: {problem}" for problem in slot.cache.check_adapter(adapter)]
    return problems
