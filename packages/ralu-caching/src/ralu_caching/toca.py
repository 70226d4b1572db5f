"""`toca`: Token-wise Caching (Zou et al., ToCa, 2024): each layer recomputes only the tokens its score picks.

At a full step every block runs; each block's attention output is kept, with the attention each token
received (softmax probabilities averaged over heads and queries), and so are the outputs of the modules that
act on tokens one by one (FLUX's feed-forwards; in its single-stream blocks the MLP input and the fused
output projection). At a ToCa step the attention is not computed: its kept output is reused whole. The
token-wise modules run on the fresh tokens only, whose new outputs replace theirs in the kept output; all
other tokens reuse it. Modulation, norms, gates and residual additions run at every step for every token.
Which modules those are is adapter knowledge (each adapter's `token_features`).

Fresh tokens are, per image and per module, those with the highest score: the attention they received at
the last full step (L2-normalised over the stream's tokens) plus `soft_fresh_weight` x the ToCa steps since
the token was last computed / `interval` (the official code's s1 + s3). How many: with `schedule: published`
(the official FLUX code's "ToCa" schedule) the fresh ratio 1 - R of layer `l` (counted within its kind of
block) is (1 - R) x (1.5 - l / 27) x the block kind's weight (FLUX: 0.4 double-stream, 1.6 single-stream),
clamped to [0, 1]; with `schedule: constant`, 1 - R everywhere. The step schedule is the official one in
every stage: `warmup` full steps, then one full step every `interval` (the official code: 3, then N).

State is per CFG branch (one context each) and per image (scores and selection are per batch row), and
starts again at every change of the token set. The hooks live in `ralu_caching.toca_hooks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import attrs

from ralu_caching.forecast_schedule import computes, warmup_problems
from ralu_core.errors import ConfigFieldError
from ralu_core.strategies.base import AdapterFacts, FeatureCache, PlannedStep, TokenwiseFeatures

SCHEDULES = ("published", "constant")


def _check(instance: ToCaConfig) -> None:
    if not 1 <= instance.interval <= 100:
        raise ConfigFieldError("interval", f"must be from 1 (no caching) to 100, got {instance.interval}")
    if not 1 <= instance.warmup <= 1000:
        raise ConfigFieldError(
            "warmup", f"must be from 1 (a full step scores the tokens) to 1000, got {instance.warmup}"
        )
    if not 0.0 <= instance.cache_ratio <= 1.0:
        raise ConfigFieldError(
            "cache_ratio", f"is the share of tokens reused (R), from 0.0 to 1.0, got {instance.cache_ratio}"
        )
    if not 0.0 <= instance.soft_fresh_weight <= 100.0:
        raise ConfigFieldError("soft_fresh_weight", f"must be from 0.0 to 100.0, got {instance.soft_fresh_weight}")
    if instance.schedule not in SCHEDULES:
        raise ConfigFieldError("schedule", f"must be one of {', '.join(SCHEDULES)}, got {instance.schedule!r}")


@attrs.frozen(kw_only=True)
class ToCaConfig:
    interval: int = 3
    """After the warm-up, one full step every `interval` steps (N); the others are ToCa steps."""
    cache_ratio: float = 0.9
    """R: the share of tokens a ToCa step reuses (before the per-layer schedule); 1 - R are recomputed."""
    warmup: int = 3
    """Full steps at the start of every stage (the official code: 3)."""
    soft_fresh_weight: float = 0.25
    """Weight of a token's age (ToCa steps since it was computed, / interval) in its score."""
    schedule: str = "published"
    """``published``: the fresh ratio varies by layer and block kind as in the official FLUX code;
    ``constant``: 1 - R in every layer."""

    def __attrs_post_init__(self) -> None:
        _check(self)


def fresh_ratio(config: ToCaConfig, layer: int, weight: float) -> float:
    """The share of tokens layer `layer` (within its kind of block, weighted `weight`) recomputes."""
    ratio = 1.0 - config.cache_ratio
    if config.schedule == "published":
        ratio *= (1.0 + 0.5 - layer / 27.0) * weight
    return min(1.0, max(0.0, ratio))


class ToCaCache(FeatureCache):
    """Reuse the attention and most tokens' feed-forward outputs; recompute the tokens the attention map picks."""

    name: ClassVar[str] = "toca"
    tune_space: ClassVar[Mapping[str, tuple[Any, ...]] | None] = {"cache_ratio": (0.7, 0.9)}
    keeps_block_features: ClassVar[bool] = True
    Config = ToCaConfig

    def __init__(self, config: ToCaConfig | None = None) -> None:
        super().__init__(config)
        self._features: Mapping[str, TokenwiseFeatures] | None = None

    def check_adapter(self, adapter: AdapterFacts) -> list[str]:
        if adapter.token_features:
            return []
        return [
            f"'toca' recomputes chosen tokens inside the transformer blocks, and the {adapter.name!r} adapter does "
            "not declare its blocks' token-wise modules (token_features); use `taylorseer` or `deepcache`"
        ]

    def use_model(self, model: AdapterFacts) -> None:
        self._features = dict(model.token_features)

    def check_stages(self, steps: Mapping[int, int]) -> list[str]:
        return warmup_problems(self.config.warmup, steps)

    def attach(self, denoiser: Any) -> Any:
        from ralu_caching.toca_hooks import toca_installed

        return toca_installed(denoiser, self.config, self._token_features())

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        config: ToCaConfig = self.config
        full = PlannedStep(reuse=self._full_counted, kind="full, tokens scored")
        partial = PlannedStep(reuse=self._toca_counted, kind="fresh tokens only")
        return tuple(full if computes(j, config.warmup, config.interval) else partial for j in range(steps))

    def _full_counted(self, model: Any) -> AbstractContextManager[None]:
        """On a (meta-device) model: a full step with the attention map recomputed for the scores."""
        from ralu_caching.toca_hooks import scoring_counted

        return scoring_counted(model, self._token_features())

    def _toca_counted(self, model: Any) -> AbstractContextManager[None]:
        """On a (meta-device) model: what a ToCa step runs, for counting."""
        from ralu_caching.toca_hooks import toca_counted

        return toca_counted(model, self.config, self._token_features())

    def _token_features(self) -> Mapping[str, TokenwiseFeatures]:
        if self._features is None:
            raise RuntimeError("toca was not told its adapter (accelerate and `ralu flops` do: use_model)")
        return self._features
