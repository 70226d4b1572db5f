"""FLOPs of a recipe on a full-size architecture, counted exactly on the meta device.

Per stage: how many image tokens the transformer sees (known before running: selectors declare
how many tokens they pick) times the steps, plus every VAE decode (the Canny selector's decode
of the half-resolution clean estimate, and the final decode). Text encoders are excluded. Two
conventions are reported: linear layers only (the RALU paper's, attention not counted) and
linear plus attention.
"""

from __future__ import annotations

from typing import Any

import attrs

from ralu_core.adapter import FlopsProfile
from ralu_core.flops import FlopCount
from ralu_core.runtime import RecipeRuntime
from ralu_core.token_plan import plan_tokens


@attrs.frozen(kw_only=True)
class StageCost:
    image_tokens: int
    steps: int
    forward: FlopCount
    sparse_tokens: int | None = None
    sparse_forward: FlopCount | None = None
    decode: FlopCount = attrs.field(factory=FlopCount)

    @property
    def total(self) -> FlopCount:
        if self.sparse_forward is None:
            return self.forward * self.steps + self.decode
        return self.forward + self.sparse_forward * (self.steps - 1) + self.decode


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

    @property
    def total_without_final_decode(self) -> FlopCount:
        cost = FlopCount()
        for stage in self.stages:
            cost = cost + stage.total
        return cost

    @property
    def total(self) -> FlopCount:
        return self.total_without_final_decode + self.final_decode

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
                }
                for s in self.stages
            ],
            "final_decode_tflops": self.final_decode.tflops(include_attention),
            "conventions": {"linear_only": convention(False), "with_attention": convention(True)},
            "text_encoders": "excluded",
        }


def recipe_cost(
    runtime: RecipeRuntime,
    profile: FlopsProfile,
    height: int,
    width: int,
    *,
    steps: int | None = None,
    baseline_steps: int | None = None,
) -> RecipeCost:
    """Count `runtime` at `height` x `width` on `profile`. `steps` fills stages without a step count
    (the baseline recipe); the baseline is the profile's reference sampler (e.g. 50 steps)."""
    grid = profile.grid(height, width)
    full = grid.num_tokens
    latent_h, latent_w = grid.latent_size
    base_steps = baseline_steps or profile.baseline_steps
    planned = runtime.schedule.planned_steps([s.spec for s in runtime.stages], steps or base_steps)
    stages = []
    for index, (stage, counts, stage_steps) in enumerate(
        zip(runtime.stages, plan_tokens(runtime, full), planned, strict=True)
    ):
        decode = FlopCount()
        if index > 0 and stage.selector is not None and stage.selector.decodes:
            decode = profile.decode(latent_h // 2, latent_w // 2)
        tokens = counts.tokens
        sparse = counts.active if stage_steps > 1 else None
        stages.append(
            StageCost(
                image_tokens=tokens,
                steps=stage_steps,
                forward=profile.forward(tokens),
                sparse_tokens=sparse,
                sparse_forward=None if sparse is None else profile.forward(sparse),
                decode=decode,
            )
        )
    final_decode = profile.decode(latent_h, latent_w)
    baseline = profile.forward(full) * base_steps + final_decode
    return RecipeCost(
        recipe=runtime.recipe.name,
        model=profile.name,
        height=height,
        width=width,
        stages=tuple(stages),
        final_decode=final_decode,
        baseline_steps=base_steps,
        baseline=baseline,
    )
