"""``ralu bench``'s harness on the toy model: interleaving, paired and unpaired metrics, outputs."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
from PIL import Image as PILImage

from ralu_core import accelerate, hookimpl
from ralu_core.measurement.bench import LABEL_WIDTH, BenchPlan, run_bench, write_outputs
from ralu_core.measurement.paired import compare
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.plugins.image_metric import Image, ImageMetric
from ralu_core.recipes import load_recipe_text
from ralu_core.testing import ToyFlopsProfile, ToyPipeline, ToyPlugin

BASELINE = "name: toy-baseline\nschedule: uniform\nstages:\n  - {level: 0}\n"
FEWER_STEPS = "name: toy-baseline-2\nschedule: uniform\nstages:\n  - {level: 0, steps: 2}\n"
RALU = """
name: toy-ralu
schedule: nt-dm
stages:
  - {steps: 2, end: 0.3, level: 1}
  - {steps: 2, end: 0.45, transition: nt-dm-upsample, selector: {name: random, ratio: 0.5}}
  - {steps: 2, end: 1.0, transition: nt-dm-upsample, selector: all}
"""


class MeanAbsDiff(ImageMetric):
    name: ClassVar[str] = "mad"
    paired: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = False

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        assert reference is not None
        return float(np.abs(image.astype(int) - reference.astype(int)).mean())


class PromptLength(ImageMetric):
    """Unpaired; declines prompts starting with 'skip'."""

    name: ClassVar[str] = "words"
    paired: ClassVar[bool] = False

    def score(self, image: Image, reference: Image | None, prompt: str) -> float | None:
        return None if prompt.startswith("skip") else float(len(prompt.split()))


class MetricsPlugin:
    @hookimpl
    def ralu_register_image_metrics(self, register) -> None:  # type: ignore[no-untyped-def]
        register(MeanAbsDiff())
        register(PromptLength())

    @hookimpl
    def ralu_register_prompt_sets(self, register) -> None:  # type: ignore[no-untyped-def]
        register("numbers", lambda count: [f"prompt number {i}" for i in range(count)])


def test_bench_scores_pairs_and_writes_every_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry = Registry.collect(create_plugin_manager(plugins=[ToyPlugin(), MetricsPlugin()]))
    assert {"mad", "words"} <= set(registry.metrics)  # installed plugins may add more
    prompts = [*registry.prompt_sets["numbers"].obj(2), "skip me"]
    assert prompts[:2] == ["prompt number 0", "prompt number 1"]
    pipe = ToyPipeline()
    recipes = [accelerate(pipe, load_recipe_text(text), plugin_manager=registry.pm) for text in (BASELINE, RALU)]
    plan = BenchPlan(
        recipes=recipes, prompts=prompts, seeds=[0, 1], call_kwargs={"height": 64, "width": 64}, steps=6, warmup=0
    )
    metrics = [registry.metrics[name].obj for name in ("mad", "words")]
    progress = RecordingProgress()
    result = run_bench(plan, metrics, ToyFlopsProfile(pipe), progress=progress)
    assert len(result.samples) == 2 * 3 * 2
    # Warm-up and timed samples are reported apart, the warm-up first (plan.warmup = 0 here: none).
    assert progress.events == [("sample", n, 12) for n in range(1, 13)]
    # Interleaving rotates which recipe runs first for each (prompt, seed).
    firsts = [result.samples[i].recipe for i in range(0, len(result.samples), 2)]
    assert set(firsts) == {"toy-baseline", "toy-ralu"}
    assert "mad" not in result.scores["toy-baseline"]  # the baseline is not paired with itself
    assert len(result.scores["toy-ralu"]["mad"]) == 6 and len(result.scores["toy-ralu"]["words"]) == 4
    summary = {row["recipe"]: row for row in result.summary()}
    assert summary["toy-baseline"]["speedup_wall"] == 1.0 and summary["toy-ralu"]["speedup_flops_all"] > 1
    assert summary["toy-ralu"]["mad"] > 0
    paths = write_outputs(result, tmp_path, "toy device", "mad")
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "grid.png"} <= names
    grid = np.asarray(PILImage.open(tmp_path / "grid.png").convert("RGB"))
    tile = result.samples[0].image.shape  # type: ignore[union-attr]
    header = grid.shape[0] - 3 * (tile[0] + 4)  # three prompts below a strip of recipe names
    assert grid.shape[1] == LABEL_WIDTH + 2 * (tile[1] + 4) and 10 <= header <= 30
    for column in np.split(grid[:header, LABEL_WIDTH:], 2, axis=1):
        assert (column < 100).any()  # each recipe's column is labelled
    for row in np.split(grid[header:, :LABEL_WIDTH], 3, axis=0):
        assert (row < 100).any()  # and each prompt's row
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"] == "toy device" and len(report["samples"]) == 12
    assert "| toy-ralu |" in (tmp_path / "report.md").read_text()
    # Each sample carries its own scores, so two recipes can be compared prompt by prompt.
    skipped = [s for s in report["samples"] if s["prompt"] == "skip me" and s["recipe"] == "toy-ralu"]
    assert len(skipped) == 2 and all(set(s["scores"]) == {"mad"} for s in skipped)
    [mad] = compare(report, "toy-ralu", "toy-ralu", ["mad"])
    assert mad.pairs == 6 and mad.equal == 6 and mad.p_value == 1.0


def test_a_recipe_that_fixes_its_steps_keeps_them_under_bench_steps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry = Registry.collect(create_plugin_manager(plugins=[ToyPlugin()]))
    pipe = ToyPipeline()
    recipes = [accelerate(pipe, load_recipe_text(t), plugin_manager=registry.pm) for t in (BASELINE, FEWER_STEPS)]
    plan = BenchPlan(recipes=recipes, prompts=["p"], seeds=[0], call_kwargs={"height": 64, "width": 64}, steps=6)
    result = run_bench(plan, [], ToyFlopsProfile(pipe))
    images = {s.recipe: s.image for s in result.samples}
    assert not np.array_equal(images["toy-baseline"], images["toy-baseline-2"])  # 6 steps vs 2
    summary = {row["recipe"]: row for row in result.summary()}
    assert 2.0 < summary["toy-baseline-2"]["speedup_flops_linear"] <= 3.0  # 6 / 2 steps, plus one shared decode


class RecordingProgress:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def warmup(self, done: int, total: int) -> None:
        self.events.append(("warmup", done, total))

    def sample(self, done: int, total: int) -> None:
        self.events.append(("sample", done, total))


def test_bench_reports_the_warm_up_apart_from_the_timed_samples() -> None:
    registry = Registry.collect(create_plugin_manager(plugins=[ToyPlugin()]))
    pipe = ToyPipeline()
    recipes = [accelerate(pipe, load_recipe_text(t), plugin_manager=registry.pm) for t in (BASELINE, RALU)]
    plan = BenchPlan(recipes=recipes, prompts=["p", "q"], seeds=[0], call_kwargs={"height": 64, "width": 64}, steps=4)
    progress = RecordingProgress()
    run_bench(plan, [], ToyFlopsProfile(pipe), progress=progress)
    assert progress.events == [("warmup", 1, 2), ("warmup", 2, 2), *[("sample", n, 4) for n in range(1, 5)]]
