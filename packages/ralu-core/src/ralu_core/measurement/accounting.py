"""FLOPs of a recipe on a full-size architecture, counted exactly on the meta device.

Per stage: how many image tokens the transformer sees (known before running: selectors declare
how many tokens they pick), what each step computes (deterministic caches declare their plan: a
forecast step runs nothing, a step that reuses blocks is counted on the meta model with the cache's
hooks in place), plus every VAE decode (the Canny selector's decode of the half-resolution clean
estimate, and the final decode). Adaptive caches cannot be planned: they are counted as full and
named, and ``ralu bench`` measures them. Text encoders are excluded. Two conventions are reported:
linear layers only (the RALU paper's, attention not counted) and linear plus attention.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import attrs

from ralu_core.measurement.flops import FlopCount
from ralu_core.measurement.profile import FlopsProfile
from ralu_core.sampling.runtime import RecipeRuntime, RuntimeStage
from ralu_core.sampling.token_plan import plan_tokens, step_counts
from ralu_core.strategies.base import FULL_STEP, FeatureCache, PlannedStep


@attrs.frozen(kw_only=True)
class StageCost:
    image_tokens: int
    steps: int
    forward: FlopCount
    sparse_tokens: int | None = None
    """The fewest tokens any step computes, where steps compute a subset (None: every step is dense)."""
    sparse_forward: FlopCount | None = None
    decode: FlopCount = attrs.field(factory=FlopCount)
    step_costs: tuple[FlopCount, ...] = ()
    """What each step costs, caches included."""
    step_kinds: tuple[str, ...] = ()
    """Per step: ``full``, or what the caches skip (``forecast``, ``middle blocks reused``)."""
    step_tokens: tuple[int, ...] = ()
    """Per step: the image tokens the model computes."""
    cached_attention: bool = False
    """Whether its sparse steps attend to every token (RAS's cached keys and values) or only to those computed."""

    @property
    def total(self) -> FlopCount:
        cost = self.decode
        for step in self.step_costs:
            cost = cost + step
        return cost


@attrs.frozen(kw_only=True)
class RecipeCost:
    recipe: str
    model: str
    height: int
    width: int
    stages: tuple[StageCost, ...]
    final_decode: FlopCount
    baseline_steps: int
    baseline: FlopCount
    adaptive_caches: tuple[str, ...] = ()
    """Caches whose savings depend on the run: counted as full here (``ralu bench`` measures them)."""
    text_encoding: FlopCount | None = None
    """The text encoders' passes, where counted (in `total` and `baseline` alike); None: left out."""

    @property
    def total_without_final_decode(self) -> FlopCount:
        cost = FlopCount()
        for stage in self.stages:
            cost = cost + stage.total
        return cost

    @property
    def total(self) -> FlopCount:
        return self.total_without_final_decode + self.final_decode + (self.text_encoding or FlopCount())

    def speedup(self, include_attention: bool) -> float:
        return self.baseline.tflops(include_attention) / self.total.tflops(include_attention)

    def to_dict(self, include_attention: bool) -> dict[str, Any]:
        """JSON report in one convention, with both conventions' totals alongside."""

        def convention(flag: bool) -> dict[str, float]:
            return {
                "baseline_tflops": self.baseline.tflops(flag),
                "tflops": self.total.tflops(flag),
                "speedup": self.speedup(flag),
            }

        return {
            "model": self.model,
            "recipe": self.recipe,
            "height": self.height,
            "width": self.width,
            "attention_counted": include_attention,
            **convention(include_attention),
            "baseline_steps": self.baseline_steps,
            "stages": [
                {
                    "image_tokens": s.image_tokens,
                    "steps": s.steps,
                    "tflops": s.total.tflops(include_attention),
                    "forward_tflops": s.forward.tflops(include_attention),
                    "decode_tflops": s.decode.tflops(include_attention),
                    **({"sparse_tokens": s.sparse_tokens} if s.sparse_tokens is not None else {}),
                    "step_kinds": dict(Counter(s.step_kinds)),
                    "step_tokens": list(s.step_tokens),
                    **({"inactive": "kv-cache" if s.cached_attention else "drop"} if s.sparse_tokens else {}),
                }
                for s in self.stages
            ],
            "final_decode_tflops": self.final_decode.tflops(include_attention),
            "conventions": {"linear_only": convention(False), "with_attention": convention(True)},
            "text_encoders": "excluded" if self.text_encoding is None else "included",
            **(
                {"text_encoder_tflops": self.text_encoding.tflops(include_attention)}
                if self.text_encoding is not None
                else {}
            ),
            "adaptive_caches_counted_as_full": list(self.adaptive_caches),
        }


def recipe_cost(
    runtime: RecipeRuntime,
    profile: FlopsProfile,
    height: int,
    width: int,
    *,
    steps: int | None = None,
    baseline_steps: int | None = None,
    text_encoders: bool = False,
) -> RecipeCost:
    """Count `runtime` at `height` x `width` on `profile`. `steps` fills stages without a step count
    (the baseline recipe); the baseline is the profile's reference sampler (e.g. 50 steps). `text_encoders`:
    count the text encoders' passes too, in the recipe and the baseline (the RALU paper's convention)."""
    grid = profile.grid(height, width)
    full = grid.num_tokens
    latent_h, latent_w = grid.latent_size
    base_steps = baseline_steps or profile.baseline_steps
    planned = runtime.schedule.planned_steps([s.spec for s in runtime.stages], steps or base_steps)
    stages = []
    adaptive: list[str] = []
    counted: dict[tuple[int, int | None, str, Any], FlopCount] = {}

    def forward(tokens: int, step: PlannedStep = FULL_STEP, attended: int | None = None) -> FlopCount:
        """One forward at this token count (its attention seeing `attended` tokens, where RAS caches the keys
        and values of the others) with what this step skips, counted once per recipe (each count is a run of
        the meta-device model)."""
        key = (tokens, attended, step.kind, step.reuse)
        if key not in counted:
            counted[key] = profile.forward(tokens, step.reuse, attended)
        return counted[key]

    for index, (stage, counts, stage_steps) in enumerate(
        zip(runtime.stages, plan_tokens(runtime, full), planned, strict=True)
    ):
        decode = FlopCount()
        if index > 0 and stage.selector is not None and stage.selector.decodes:
            decode = profile.decode(latent_h // 2, latent_w // 2)
        tokens = counts.tokens
        per_step = (tokens,) * stage_steps
        if stage.step_tokens is not None:
            per_step = step_counts(stage.step_tokens, stage_steps, tokens)
        sparse = min(per_step) if min(per_step, default=tokens) < tokens else None
        plan = cache_plan(runtime.caches_in(index), stage_steps, adaptive)

        def attended(seen: int, stage: RuntimeStage = stage, tokens: int = tokens) -> int | None:
            return tokens if stage.cached_attention and seen < tokens else None

        step_costs = tuple(
            forward(seen, planned_step, attended(seen)) if planned_step.runs else FlopCount()
            for seen, planned_step in zip(per_step, plan, strict=True)
        )
        stages.append(
            StageCost(
                image_tokens=tokens,
                steps=stage_steps,
                forward=forward(tokens),
                sparse_tokens=sparse,
                sparse_forward=None if sparse is None else forward(sparse, attended=attended(sparse)),
                decode=decode,
                step_costs=step_costs,
                step_kinds=tuple(s.kind for s in plan),
                step_tokens=per_step,
                cached_attention=stage.cached_attention,
            )
        )
    final_decode = profile.decode(latent_h, latent_w)
    text = prompt_encoding(profile) if text_encoders else None
    # sampler_cost's count, the forward counted once
    baseline = forward(full) * base_steps + final_decode + (text or FlopCount())
    return RecipeCost(
        recipe=runtime.recipe.name,
        model=profile.name,
        height=height,
        width=width,
        stages=tuple(stages),
        final_decode=final_decode,
        baseline_steps=base_steps,
        baseline=baseline,
        adaptive_caches=tuple(dict.fromkeys(adaptive)),
        text_encoding=text,
    )


def cache_plan(caches: tuple[FeatureCache, ...], steps: int, adaptive: list[str]) -> tuple[PlannedStep, ...]:
    """The stacked caches' plan for a stage: a step runs if every cache lets it, and skips what any of them
    skips. Adaptive caches (no plan) are counted as full and appended to `adaptive`."""
    plans = []
    for cache in caches:
        plan = cache.planned_steps(steps)
        if plan is None:
            adaptive.append(cache.name)
        elif len(plan) != steps:
            raise ValueError(f"{cache.describe()} planned {len(plan)} steps for a stage of {steps}")
        else:
            plans.append(plan)
    combined = []
    for step in range(steps):
        parts = [plan[step] for plan in plans]
        reuses = [p.reuse for p in parts if p.reuse is not None]
        kinds = sorted({p.kind for p in parts if p.kind != FULL_STEP.kind})
        combined.append(
            PlannedStep(
                runs=all(p.runs for p in parts),
                reuse=None if not reuses else _stacked(reuses),
                kind=" + ".join(kinds) or FULL_STEP.kind,
            )
        )
    return tuple(combined)


@attrs.frozen
class StackedReuse:
    """Several caches' counting hooks entered together, comparable by its parts (so that equal stacks share a
    count)."""

    parts: tuple[Any, ...]

    def __call__(self, model: Any) -> AbstractContextManager[Any]:
        stack = ExitStack()
        for reuse in self.parts:
            stack.enter_context(reuse(model))
        return stack


def _stacked(reuses: list[Any]) -> Any:
    return StackedReuse(tuple(reuses))


def sampler_cost(
    profile: FlopsProfile, height: int, width: int, steps: int, *, text_encoders: bool = False
) -> FlopCount:
    """A plain sampler's FLOPs on `profile`: `steps` full-resolution forwards and the final decode, and the text
    encoders' passes where asked (what another model's baseline costs, to quote a speed-up against it, as the
    RALU paper quotes distilled models against FLUX.1-dev and SD3.5-Large)."""
    grid = profile.grid(height, width)
    latent_h, latent_w = grid.latent_size
    cost = profile.forward(grid.num_tokens, None, None) * steps + profile.decode(latent_h, latent_w)
    return cost + prompt_encoding(profile) if text_encoders else cost


def prompt_encoding(profile: FlopsProfile) -> FlopCount:
    """The text encoders' FLOPs for one prompt on `profile` (an error where it does not know them)."""
    text = profile.text_encoders()
    if text is None:
        raise ValueError(f"the {profile.name} profile does not count its text encoders")
    return text
