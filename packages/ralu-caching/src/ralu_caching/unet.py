"""U-Net pipelines (Stable Diffusion 1.x/2.x, SDXL): their own sampler, with DeepCache, through the same
``accelerate(pipe, recipe)`` call.

ralu's engine samples flow-matching transformers token by token; a U-Net pipeline has neither tokens
nor a flow-matching schedule, so its adapter runs the pipeline's own loop and accepts only recipes that
say exactly that (one full-resolution stage, the pipeline's own schedule) with caches that work on
U-Nets. `deepcache-unet` is the DeepCache package's own helper (Ma et al., 2024), enabled for the call
and removed afterwards, leaving the U-Net's modules exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import attrs

from ralu_core.errors import ConfigFieldError
from ralu_core.pipelines.adapter import is_diffusers_pipeline
from ralu_core.sampling.contract import BoundCall, ModelAdapter
from ralu_core.sampling.runtime import RecipeRuntime
from ralu_core.strategies.base import FeatureCache

UNET_CACHES = ("deepcache-unet", "none")


class UNetAdapter(ModelAdapter):
    """diffusers U-Net pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline): their own sampler."""

    name: ClassVar[str] = "unet"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

    def supports(self, pipeline: Any) -> bool:
        return is_diffusers_pipeline(pipeline, self.pipeline_classes)

    def bind(self, pipeline: Any, coarsest_level: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
        # U-Net caches need the pipeline's scheduler to know the step, not only the U-Net: they hook the pipeline.
        return BoundCall(denoiser=pipeline, run_pipeline=partial(pipeline, *args, **kwargs))

    def check_runtime(self, runtime: RecipeRuntime) -> list[str]:
        problems = []
        if len(runtime.stages) != 1 or runtime.start_level != 0 or runtime.stages[0].step_tokens is not None:
            problems.append(
                "$.stages: U-Net pipelines run their own sampler: the recipe must have one full-resolution stage "
                "(`- level: 0`) without step_tokens"
            )
        if runtime.schedule.name != "uniform" or runtime.stages[0].spec.steps is not None:
            problems.append(
                "$.schedule: U-Net pipelines use their own schedule: use `schedule: uniform` and leave the stage's "
                "steps open (pass num_inference_steps to the call)"
            )
        for index, slot in enumerate(runtime.caches):
            if slot.cache.name not in UNET_CACHES:
                problems.append(f"$.cache[{index}]: {slot.cache.name!r} does not work on U-Nets; use deepcache-unet")
        return problems


def _check(instance: DeepCacheUNetConfig) -> None:
    if not 1 <= instance.interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (every step full) to 100, got {instance.interval}")
    if not 0 <= instance.branch <= 11:
        raise ConfigFieldError("branch", f"must be from 0 (the shallowest skip branch) to 11, got {instance.branch}")


@attrs.frozen(kw_only=True)
class DeepCacheUNetConfig:
    interval: int = 3
    """A full U-Net evaluation every `interval` steps (DeepCache's cache_interval)."""
    branch: int = 0
    """The skip branch whose output is cached (DeepCache's cache_branch_id; 0 skips the most)."""

    def __attrs_post_init__(self) -> None:
        _check(self)


class DeepCacheUNet(FeatureCache):
    """DeepCache on U-Net pipelines, with the DeepCache package's own helper, for the duration of a call."""

    name: ClassVar[str] = "deepcache-unet"
    Config = DeepCacheUNetConfig

    def planned_steps(self, steps: int) -> None:
        return None  # U-Net pipelines are not counted

    @contextmanager
    def _attached(self, pipeline: Any) -> Iterator[None]:
        unet = getattr(pipeline, "unet", None)
        if unet is None or getattr(pipeline, "scheduler", None) is None:
            raise ValueError(
                "deepcache-unet works on U-Net pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline); "
                "for diffusion transformers use `deepcache`"
            )
        from DeepCache import DeepCacheSDHelper

        # The helper leaves `forward` set on every module it wrapped: note what was there, to put it back.
        before = {id(m): vars(m).get("forward") for m in unet.modules()}
        had = {id(m) for m in unet.modules() if "forward" in vars(m)}
        helper = DeepCacheSDHelper(pipe=pipeline)
        helper.set_params(cache_interval=self.config.interval, cache_branch_id=self.config.branch)
        helper.enable()
        try:
            yield
        finally:
            helper.disable()
            for module in unet.modules():
                if id(module) in had:
                    module.forward = before[id(module)]
                elif "forward" in vars(module):
                    del module.forward

    def attach(self, pipeline: Any) -> Any:
        return self._attached(pipeline)
