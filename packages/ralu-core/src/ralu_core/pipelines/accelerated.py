"""`accelerate(pipe, recipe)`: the one-line public entry point.

The returned object is called like the pipeline and returns the pipeline's own output type. It
holds its own plugin manager, strategies and state; the pipeline itself is not modified (no
scheduler stepped; what a call needs on it, such as a block-level cache's hooks, is in place for
that call only and removed afterwards), so `pipe` stays usable and two accelerated views of one
pipeline can coexist.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pluggy
import torch

from ralu_core.errors import CallError, PluginError, RaluError, RecipeError, UnsupportedPipelineError
from ralu_core.pipelines.adapter import CachedAttention, adapter_facts, bind_to_adapter
from ralu_core.pipelines.pipeline_call import user_cache_problems
from ralu_core.pipelines.schedulers import scheduler_problems
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.recipes import Recipe, RecipeRuntime, find_recipe, resolve_recipe
from ralu_core.sampling.contract import ModelAdapter
from ralu_core.sampling.engine import SamplingEngine
from ralu_core.sampling.token_plan import check_call_plan
from ralu_core.strategies.base import FeatureCache


class AcceleratedPipeline:
    """A pipeline driven by a recipe. Call it exactly like the wrapped pipeline."""

    def __init__(self, pipeline: Any, adapter: ModelAdapter, runtime: RecipeRuntime, pm: pluggy.PluginManager) -> None:
        self.pipeline = pipeline
        self.adapter = adapter
        self.runtime = runtime
        self.plugin_manager = pm
        self.engine = SamplingEngine(runtime=runtime, hooks=pm.hook)

    @property
    def recipe(self) -> Recipe:
        return self.runtime.recipe

    def __repr__(self) -> str:
        return f"AcceleratedPipeline({type(self.pipeline).__name__}, recipe={self.recipe.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        steps = kwargs.get("num_inference_steps")
        if steps is not None and not self.runtime.schedule.accepts_requested_steps:
            fixed = tuple(s.spec.steps for s in self.runtime.stages)
            raise CallError(
                f"recipe {self.recipe.name!r} fixes its steps per stage {fixed} (schedule "
                f"{self.runtime.schedule.name!r}); drop num_inference_steps, or edit the stages' `steps` in a copy "
                "of the recipe (`ralu recipes show NAME > my.yaml`)"
            )
        with pipeline_lock(self.pipeline), torch.no_grad(), ExitStack() as attached:
            # Everything below is checked before any model runs (the text encoders included).
            bound = self.adapter.bind(self.pipeline, self.runtime.start_level, args, kwargs)
            if bound.run_pipeline is not None:  # e.g. U-Nets: the pipeline's loop, with the recipe's caches
                self.runtime.reset()
                for slot in self.runtime.caches:
                    attach_cache(attached, slot.cache, bound.denoiser)
                return bound.run_pipeline()
            assert bound.grid is not None and bound.prepare is not None
            problems = scheduler_problems(
                getattr(self.pipeline, "scheduler", None), self.runtime.schedule, self.recipe.name
            )
            if problems:
                raise UnsupportedPipelineError("; ".join(problems))
            check_call_plan(self.runtime, bound.grid.num_tokens, bound.steps, bound.strength)
            if self.runtime.cached_attention:
                self.check_cached_attention()
            # Block-level caches hook into the denoiser for this call only (and refuse an unsuitable one now).
            problems = user_cache_problems(bound.denoiser, adapter_facts(self.adapter).last_block_returns_text)
            if problems:
                raise UnsupportedPipelineError("; ".join(problems))
            for slot in self.runtime.caches:
                if slot.stages is None:
                    attach_cache(attached, slot.cache, bound.denoiser)
                else:  # hooked in its own stages only (below); tried now, so that an unsuitable model fails early
                    with ExitStack() as trial:
                        attach_cache(trial, slot.cache, bound.denoiser)
            call = bound.prepare()
            final = self.engine.run(call, stage_scope=partial(stage_caches, self.runtime, bound.denoiser))
            return call.finish(final)

    def check_cached_attention(self) -> None:
        """RAS attention needs an adapter that keeps keys and values, and the pipeline's processors it knows."""
        adapter = self.adapter if isinstance(self.adapter, CachedAttention) else None
        problems = ["its adapter cannot"] if adapter is None else adapter.cached_attention_problems(self.pipeline)
        if problems:
            raise UnsupportedPipelineError(
                f"recipe {self.recipe.name!r} keeps keys and values of skipped tokens (RAS attention), but "
                + "; ".join(problems)
                + ". Restore diffusers' default attention processors, or set `inactive: drop` on the stages "
                "with step_tokens"
            )


@contextmanager
def stage_caches(runtime: RecipeRuntime, denoiser: Any, index: int) -> Iterator[None]:
    """During stage `index`: the block-level hooks of the caches whose `stages:` name it (a cache without a
    filter is hooked for the whole call). Outside its stages such a cache's hooks are not there at all, so the
    model runs as it would without it, as `ralu flops` counts it."""
    with ExitStack() as stack:
        for slot in runtime.caches:
            if slot.stages is not None and slot.active_in(index):
                attach_cache(stack, slot.cache, denoiser)
        yield


def attach_cache(stack: ExitStack, cache: FeatureCache, denoiser: Any) -> None:
    """Enter `cache.attach(denoiser)` on `stack`; a failure is reported as the cache plugin's error."""
    try:
        stack.enter_context(cache.attach(denoiser))
    except RaluError:
        raise
    except Exception as exc:
        raise PluginError(f"{cache.describe()} cannot attach to {type(denoiser).__name__}: {exc}") from exc


_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def pipeline_lock(pipeline: Any) -> threading.RLock:
    """One lock per pipeline object, shared by every accelerated view of it.

    A diffusers pipeline is not thread-safe (its tokenizers, text encoders and VAE keep per-call state),
    so calls from several threads through ralu take turns on the same pipeline instead of corrupting
    each other; for parallel generation, use one pipeline per thread, process or GPU. The table holds
    the pipelines weakly: it never keeps one alive, and holds no sampling state.
    """
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(pipeline)
        except TypeError:  # an object that cannot be weakly referenced cannot share a lock: it gets none
            return threading.RLock()
        if lock is None:
            lock = _LOCKS[pipeline] = threading.RLock()
        return lock


def accelerate(
    pipeline: Any,
    recipe: str | Path | Recipe,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
) -> AcceleratedPipeline:
    """Wrap `pipeline` with `recipe` (a built-in name such as ``"ralu-flux-7x"``, a YAML path, or a
    Recipe). Everything is validated here, before any model runs."""
    pm = plugin_manager if plugin_manager is not None else create_plugin_manager()
    registry = Registry.collect(pm)
    adapter = registry.resolve_adapter(pipeline)
    chosen = find_recipe(recipe, registry)
    runtime = resolve_recipe(chosen, registry)
    bind_to_adapter(adapter, runtime)
    if chosen.model is not None and chosen.model != adapter.name:
        raise RecipeError(
            chosen.name,
            [
                f"$.model: this recipe is for {chosen.model!r} pipelines, but {type(pipeline).__name__} is "
                f"driven by the {adapter.name!r} adapter; pick a recipe for {adapter.name!r} (`ralu recipes list`)"
            ],
        )
    return AcceleratedPipeline(pipeline, adapter, runtime, pm)
