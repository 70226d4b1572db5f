"""The adapter capabilities: small protocols an adapter implements where it has them (embedded models, RAS
attention, checks before loading, block declarations for caches, limits on recipes, recommended recipes;
counting FLOPs is `ralu_core.measurement.profile.CountsFlops`), and the checks of a recipe against an
adapter. The required contract (`ModelAdapter`, `BoundCall`, `ModelCall`) is `ralu_core.sampling.contract`,
re-exported here for adapter authors."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ralu_core.errors import CallError, RecipeError
from ralu_core.sampling.contract import BoundCall, CallPart, ModelAdapter, ModelCall, ProgressBar
from ralu_core.sampling.runtime import RecipeRuntime
from ralu_core.strategies.base import AdapterFacts, ModelBlocks

__all__ = [
    "BoundCall",
    "CachedAttention",
    "CallPart",
    "ChecksBeforeLoading",
    "ConfigReader",
    "DescribesBlocks",
    "EmbedsModels",
    "LimitsRecipes",
    "ModelAdapter",
    "ModelCall",
    "ProgressBar",
    "RecommendsRecipes",
    "adapter_facts",
    "adapter_problems",
    "bind_to_adapter",
    "check_image_size",
    "embedded_models",
    "image_side",
    "is_diffusers_pipeline",
    "iter_chunks",
]

ConfigReader = Callable[[str], Mapping[str, Any] | None]
"""Reads a stored pipeline component's config (``"vae"``, ``"transformer"``), None where unavailable."""


# --- optional capabilities ---------------------------------------------------------------------------


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
