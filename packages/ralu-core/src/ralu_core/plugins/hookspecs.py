"""The pluggy hook specifications of ralu (project name ``"ralu"``).

Plugins are modules or objects registered through the ``ralu`` entry-point group. Registration
hooks run once, when a plugin manager is built, and hand each plugin a ``register`` callable:
the engine then calls plain Python objects, so pluggy never sits on the sampling hot path.
Observer hooks are broadcast at the end of each step and stage (progress, tracing, metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ralu_core.plugins.image_metric import ImageMetric
    from ralu_core.plugins.models import NamedModel
    from ralu_core.sampling.contract import ModelAdapter
    from ralu_core.sampling.events import StageEvent, StepEvent
    from ralu_core.strategies.base import FeatureCache, ResolutionTransition, TimestepSchedule, TokenSelector

PROJECT = "ralu"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

RegisterSelector = Callable[["type[TokenSelector]"], None]
RegisterTransition = Callable[["type[ResolutionTransition]"], None]
RegisterSchedule = Callable[["type[TimestepSchedule]"], None]
RegisterCache = Callable[["type[FeatureCache]"], None]
RegisterAdapter = Callable[["ModelAdapter"], None]
RegisterRecipe = Callable[[str, Path], None]
RegisterMetric = Callable[["ImageMetric"], None]
RegisterPromptSet = Callable[[str, "Callable[[int], list[str]]"], None]
RegisterModel = Callable[["NamedModel"], None]


@hookspec
def ralu_register_token_selectors(register: RegisterSelector) -> None:
    """Register token selector classes: ``register(MySelector)``.

    A selector decides which tokens to upsample at a transition or to compute at a step. The
    class subclasses :class:`ralu_core.strategies.TokenSelector`, has a unique ``name`` (what
    recipes write) and an attrs ``Config`` class for its parameters.
    """


@hookspec
def ralu_register_transitions(register: RegisterTransition) -> None:
    """Register resolution transition classes: ``register(MyTransition)``.

    A transition changes token levels between stages and injects noise; subclasses
    :class:`ralu_core.strategies.ResolutionTransition`.
    """


@hookspec
def ralu_register_schedules(register: RegisterSchedule) -> None:
    """Register timestep schedule classes: ``register(MySchedule)``.

    A schedule turns a recipe's stages into per-stage sigma grids, including the rewinds at
    transitions; subclasses :class:`ralu_core.strategies.TimestepSchedule`.
    """


@hookspec
def ralu_register_feature_caches(register: RegisterCache) -> None:
    """Register feature cache classes: ``register(MyCache)``.

    A cache decides what the model call may reuse across steps; it is told when a stage starts
    so that it never reuses features across a change of token count. Subclasses
    :class:`ralu_core.strategies.FeatureCache`.
    """


@hookspec
def ralu_register_model_adapters(register: RegisterAdapter) -> None:
    """Register model adapter instances: ``register(MyAdapter())``.

    Listed by ``ralu plugins`` and used by name where no pipeline exists yet (``ralu flops``,
    loading ``--model`` for ``ralu generate``).
    """


@hookspec
def ralu_register_recipes(register: RegisterRecipe) -> None:
    """Register built-in recipes by name: ``register("my-recipe", path_to_yaml)``.

    Registered names work wherever a recipe is expected (``accelerate(pipe, "my-recipe")``,
    ``ralu generate --recipe my-recipe``) and are listed by ``ralu recipes list``.
    """


@hookspec
def ralu_register_image_metrics(register: RegisterMetric) -> None:
    """Register image quality metrics for ``ralu bench``: ``register(metric)``.

    A metric (:class:`ralu_core.plugins.image_metric.ImageMetric`) scores one generated image, either against the
    baseline recipe's image of the same prompt and seed (paired: PSNR, SSIM...) or against its
    prompt (unpaired: text alignment). It may decline an image by returning None.
    """


@hookspec
def ralu_register_prompt_sets(register: RegisterPromptSet) -> None:
    """Register named prompt sets for ``ralu bench --prompt-set NAME``: ``register(name, make)``.

    ``make(count)`` returns ``count`` prompts, deterministically (the same count gives the same list).
    """


@hookspec
def ralu_register_models(register: RegisterModel) -> None:
    """Register pipelines that can be loaded offline by name: ``register(NamedModel(...))``.

    A :class:`ralu_core.plugins.models.NamedModel` names its adapter, a loader, the call arguments it was
    trained for, and whether it is the default model of ``ralu generate`` / ``ralu bench`` for its
    adapter's recipes (ralu-bench registers its trained reference models this way).
    """


@hookspec(firstresult=True)
def ralu_resolve_model_adapter(pipeline: Any) -> ModelAdapter | None:
    """Return the adapter that drives ``pipeline``, or None if this plugin does not know it.

    The first non-None answer wins, so a plugin can override a built-in adapter by being
    registered later (pluggy calls later registrations first).
    """


@hookspec
def ralu_on_step_end(event: StepEvent) -> None:
    """Observe the end of each Euler step (after the update): stage, step, sigmas, token count."""


@hookspec
def ralu_on_stage_end(event: StageEvent) -> None:
    """Observe the end of each stage (before the next transition): the state and its levels."""
