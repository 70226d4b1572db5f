"""How ``ralu tune`` scores a candidate on one (prompt, seed): its image against the baseline's, by the chosen
registered metrics, combined into one number.

The combination is a weighted mean of each metric's `unit_score` (its value on [0, 1], higher better: PSNR and
edge PSNR as dB / 50, SSIM and ShapeEval as they are, LPIPS as 1 - LPIPS), over the metrics that scored the
image (ShapeEval declines prompts that name no shape). By default every registered metric that can run here has
weight 1; ``--metric psnr --metric ssim:2`` chooses others. A metric asked for that cannot run (LPIPS without its
weights) is refused with its reason, never dropped in silence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from ralu_core.errors import RaluError
from ralu_core.measurement.bench import to_uint8
from ralu_core.pipelines.accelerated import AcceleratedPipeline, accelerate
from ralu_core.plugins import Registry
from ralu_core.plugins.image_metric import Image, ImageMetric
from ralu_core.recipes.model import Recipe
from ralu_core.tuning.journal import Journal, SampleKey
from ralu_core.tuning.workers import OneProcess, Workers

SCORE = "score"
"""The combined score's name in reports."""


@attrs.frozen
class Weighted:
    metric: ImageMetric
    weight: float

    @property
    def spec(self) -> str:
        return f"{self.metric.name}:{self.weight:g}"


def choose_metrics(registry: Registry, asked: Sequence[str] | None) -> tuple[list[Weighted], list[str]]:
    """The metrics to score with (``name`` or ``name:weight``), and notes on the registered ones left out."""
    known = {name: entry.obj for name, entry in sorted(registry.metrics.items())}
    if not known:
        raise RaluError(
            "ralu tune scores images with registered image metrics, and none is installed; install ralu-bench "
            "(psnr, ssim, edge_psnr, shapeeval) or a metric plugin"
        )
    if not asked:
        chosen = [Weighted(m, 1.0) for m in known.values() if not m.unavailable()]
        notes = [f"metric {m.name!r} left out: {m.unavailable()}" for m in known.values() if m.unavailable()]
        if not any(w.metric.paired for w in chosen):
            raise RaluError("ralu tune needs a paired image metric (psnr, ssim ...); none of those installed can run")
        return chosen, notes
    chosen = []
    for spec in asked:
        name, _, weight_text = spec.partition(":")
        metric = known.get(name)
        if metric is None:
            raise RaluError(f"--metric {spec}: no image metric {name!r} is registered; known: {', '.join(known)}")
        if metric.unavailable():
            raise RaluError(f"--metric {spec}: {name!r} cannot run here: {metric.unavailable()}")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight > 0):
            raise RaluError(f"--metric {spec}: the weight after ':' must be a positive number, got {weight_text!r}")
        if any(w.metric.name == name for w in chosen):
            raise RaluError(f"--metric {spec}: {name!r} is given twice")
        chosen.append(Weighted(metric, weight))
    return chosen, []


def combined(scores: dict[str, float], metrics: Sequence[Weighted]) -> float:
    """The weighted mean of the unit scores of the metrics that scored (0 where none did)."""
    total = weight = 0.0
    for entry in metrics:
        value = scores.get(entry.metric.name)
        if value is None or math.isnan(value):
            continue
        total += entry.weight * entry.metric.unit_score(value)
        weight += entry.weight
    return total / weight if weight else 0.0


class Scorer:
    """Makes and scores the images of candidates on the tune's samples, through the journal: what it holds is
    never made again."""

    def __init__(
        self,
        pipe: Any,
        registry: Registry,
        prompts: Sequence[str],
        call_kwargs: dict[str, Any],
        metrics: Sequence[Weighted],
        journal: Journal,
        baseline: Recipe,
    ) -> None:
        self.pipe, self.registry, self.prompts = pipe, registry, list(prompts)
        self.call_kwargs, self.metrics, self.journal = dict(call_kwargs), list(metrics), journal
        self.baseline_recipe = baseline
        self._accelerated: tuple[str, AcceleratedPipeline] | None = None
        self.workers: Workers = OneProcess()
        self.owned: set[SampleKey] = set()
        self.calls = 0
        """Images made by this scorer (not read from the journal)."""

    def share(self, samples: Sequence[SampleKey], workers: Workers) -> None:
        """Split `samples` over `workers`: this process makes the images of every `count`-th one."""
        self.workers = workers
        self.owned = {sample for i, sample in enumerate(samples) if i % workers.count == workers.index}

    def owns(self, sample: SampleKey) -> bool:
        return sample in self.owned if self.workers.count > 1 else True

    def fill(self, wanted: Sequence[tuple[str, Recipe, SampleKey]], advance: Callable[[], None] = lambda: None) -> None:
        """Make sure the journal holds the metric values of every (candidate key, recipe, sample) in `wanted`:
        this process measures those of its samples, then the processes exchange theirs (a collective: every
        process calls it with the same `wanted`). `advance` is told of each one as it is done, for a progress
        bar that moves image by image."""
        measured: dict[tuple[str, int, int], dict[str, float]] = {}
        for key, recipe, sample in wanted:
            if self.owns(sample):
                if self.journal.scored(key, sample) is None:
                    measured[(key, sample.prompt, sample.seed)] = self.metric_values(key, recipe, sample)
                advance()
        if self.workers.count > 1:
            for others in self.workers.exchange(measured):
                for (key, prompt, seed), values in others.items():
                    if self.journal.scored(key, SampleKey(prompt, seed)) is None:
                        self.journal.remember(key, SampleKey(prompt, seed), values)
            for _ in range(sum(1 for _, _, sample in wanted if not self.owns(sample))):
                advance()

    def image(self, recipe: Recipe, sample: SampleKey) -> Image:
        if self._accelerated is None or self._accelerated[0] != recipe.name:
            self._accelerated = (recipe.name, accelerate(self.pipe, recipe, plugin_manager=self.registry.pm))
        fast = self._accelerated[1]
        generator = torch.Generator("cpu").manual_seed(sample.seed)
        output = fast(prompt=self.prompts[sample.prompt], generator=generator, output_type="np", **self.call_kwargs)
        self.calls += 1
        return to_uint8(output.images[0])

    def baseline(self, sample: SampleKey) -> Image:
        image = self.journal.baseline(sample)
        if image is None:
            image = self.image(self.baseline_recipe, sample)
            self.journal.keep_baseline(sample, image)
        return image

    def metric_values(self, key: str, recipe: Recipe, sample: SampleKey) -> dict[str, float]:
        """The metric values of candidate `key` (whose recipe is `recipe`) on `sample`."""
        kept = self.journal.scored(key, sample)
        if kept is not None:
            return kept
        started = time.monotonic()
        reference = self.baseline(sample)
        image = self.image(recipe, sample)
        prompt = self.prompts[sample.prompt]
        values: dict[str, float] = {}
        for entry in self.metrics:
            value = entry.metric.score(image, reference if entry.metric.paired else None, prompt)
            if value is not None:
                values[entry.metric.name] = float(value)
        self.journal.record(key, sample, values, seconds=time.monotonic() - started)
        return values

    def kept(self, key: str, sample: SampleKey) -> bool:
        """Whether the journal holds this candidate's values on `sample` (they cost no image)."""
        return self.journal.scored(key, sample) is not None

    @property
    def spent_before(self) -> float:
        """Seconds earlier runs of this tune spent on the images this process kept (see the journal)."""
        return self.journal.spent_before

    def combined_score(self, key: str, recipe: Recipe, sample: SampleKey) -> float:
        return combined(self.metric_values(key, recipe, sample), self.metrics)
