"""`ralu tune` and `ralu_core.tune`: the search space from the registry (a third-party selector joins it), every
scored candidate within ± 5 % of its speed-up, held-out samples that chose nothing, fewer steps recommended where
they do as well, outputs that load back, a killed tune resumed without remaking an image, the same inputs giving
the same result, and bad input refused before any image is made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
import torch

import ralu_core
from ralu_core.cli import main
from ralu_core.errors import RaluError
from ralu_core.measurement.profile import counting
from ralu_core.plugins import Registry, create_plugin_manager
from ralu_core.plugins.hookspecs import hookimpl
from ralu_core.recipes import find_recipe, load_recipe_file
from ralu_core.strategies.base import FeatureCache, PlannedStep, SelectionRequest
from ralu_core.strategies.selectors import RatioSelector
from ralu_core.tuning import model_space
from ralu_core.tuning.cost import WINDOW, CostCounter, serves
from ralu_core.tuning.journal import SampleKey
from ralu_core.tuning.search import (
    Progress,
    TuneSettings,
    _best_control,
    count_candidates,
    round_sizes,
    run_search,
    split_samples,
)
from ralu_core.tuning.space import (
    FEWER_STEPS,
    RALU,
    RALU_CACHE,
    STEPS_CACHE,
    ModelSpace,
    Searched,
    check_searchable,
    searched_strategies,
    structural_candidates,
)
from ralu_flux.testing import make_flux_pipeline

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a pink square"]
SIZE = {"height": 64, "width": 64}
CALL = {"max_sequence_length": 16}


class Checkerboard(RatioSelector):
    """A third party's upsample selector: every other token by position."""

    name: ClassVar[str] = "checkerboard"
    tune_space: ClassVar[dict[str, tuple[Any, ...]] | None] = {"ratio": (0.25,)}

    def scores(self, request: SelectionRequest) -> torch.Tensor:
        return (torch.arange(request.candidates.shape[1]) % 2).float().expand(request.candidates.shape[0], -1)


@attrs.frozen
class EveryConfig:
    every: int = 2


class EveryOther(FeatureCache):
    """A third party's cache (it reuses nothing; what matters here is that tune finds it)."""

    name: ClassVar[str] = "every-other"
    Config = EveryConfig
    tune_space: ClassVar[dict[str, tuple[Any, ...]] | None] = {"every": (2, 3)}

    def planned_steps(self, steps: int) -> tuple[PlannedStep, ...]:
        return (PlannedStep(),) * steps


class CheckerboardPlugin:
    @hookimpl
    def ralu_register_token_selectors(self, register: Any) -> None:
        register(Checkerboard)

    @hookimpl
    def ralu_register_feature_caches(self, register: Any) -> None:
        register(EveryOther)


@pytest.fixture(scope="module")
def flux() -> Any:
    pipe = make_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_tune(pipe: Any, **options: Any) -> ralu_core.TuneResult:
    settings: dict[str, Any] = {
        "speedups": [1.8],
        "seeds": [0, 1],
        "metrics": ["psnr", "ssim"],
        "max_candidates": 4,
        "call_kwargs": CALL,
        **SIZE,
        **options,
    }
    return ralu_core.tune(pipe, PROMPTS, **settings)


def test_the_search_space_comes_from_the_registry_and_a_third_party_selector_joins_it() -> None:
    registry = Registry.collect(create_plugin_manager(plugins=[CheckerboardPlugin()]))
    searched = searched_strategies(registry)
    upsample = {name for name, _ in searched.upsample}
    assert {"canny-edge", "latent-gradient", "random", "checkerboard"} <= upsample
    assert {name for name, _ in searched.step} == {"ras-focus"}
    assert {"deepcache", "taylorseer", "toca", "delta-dit", "velocity-forecast"} <= {n for n, _ in searched.caches}
    left_out = " ".join(searched.left_out)
    assert "'first-block'" in left_out and "'db-cache'" in left_out  # adaptive: FLOPs known only after a run
    assert ("checkerboard", {"ratio": 0.25}) in searched.upsample
    assert ("every-other", {"every": 2}) in searched.caches and ("every-other", {"every": 3}) in searched.caches
    model = ModelSpace(adapter="flux", baseline=find_recipe("flux-baseline", registry), default_steps=28)
    labels = {(c.family, c.label) for c, _ in structural_candidates(model, searched)}
    joined = {family for family, label in labels if "every-other" in label or "checkerboard" in label}
    assert joined == {RALU, STEPS_CACHE, RALU_CACHE}  # the selector in RALU plans, the cache on plans and steps


def test_skipping_combinations_before_counting_loses_no_candidate_of_a_speedup(flux) -> None:  # type: ignore[no-untyped-def]
    """Combinations of a plan with a cache or RAS are skipped where the plan is too fast, or too slow even with
    the most that addition gained on the model's sampler: counting everything finds no more candidates."""
    registry = Registry.collect(create_plugin_manager())
    adapter = registry.resolve_adapter(flux)
    profile = counting(adapter).pipeline_flops_profile(flux, {**SIZE, **CALL})
    model = model_space(registry, adapter, 28, True)
    searched = searched_strategies(registry)
    speedups = [1.6, 1.9]

    def serving(prune: bool) -> tuple[set[str], int]:
        counter = CostCounter(registry, adapter, profile, 64, 64, 28)
        costed, skipped = count_candidates(model, searched, counter, speedups, prune=prune)
        return {c.candidate.key for c in costed if any(serves(c.speedup, t) for t in speedups)}, skipped

    pruned, skipped = serving(True)
    everything, none_skipped = serving(False)
    assert skipped > 0 and none_skipped == 0
    assert pruned == everything


def test_a_family_with_nothing_to_search_is_refused() -> None:
    with pytest.raises(RaluError, match="no installed strategy for the 'toy' adapter declares a tune_space"):
        check_searchable(Searched(upsample=(), step=(), caches=(), left_out=()), "toy")


def test_held_out_samples_share_no_prompt_and_no_seed_with_the_selection() -> None:
    selection, held = split_samples(7, [0, 1, 2, 3, 4, 5])
    assert {s.prompt for s in selection}.isdisjoint({s.prompt for s in held})
    assert {s.seed for s in selection}.isdisjoint({s.seed for s in held})
    assert {s.prompt for s in held} == {0, 3, 6} and {s.seed for s in held} == {4, 5} and len(held) == 6
    assert len(selection) == 4 * 4 and selection == split_samples(7, [0, 1, 2, 3, 4, 5])[0]  # shuffled, fixed
    assert SampleKey(1, 0) in selection
    with pytest.raises(RaluError, match="leave 1 held-out sample"):
        split_samples(3, [0, 1])


def test_successive_halving_keeps_a_third_on_twice_the_samples() -> None:
    assert round_sizes(27, 16, 2, 3) == [(27, 2), (9, 4), (3, 8)]  # the best of the last 3 wins
    assert round_sizes(4, 2, 2, 3) == [(4, 2), (2, 2)]
    assert round_sizes(1, 16, 2, 3) == [(1, 2)]


def test_a_tune_writes_a_recipe_that_serves_its_speedup_and_resumes_without_remaking_images(flux, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "tuned"
    first = small_tune(flux, out=out)
    assert first.images_made > 0
    target = first.target(1.8)
    assert all(abs((e.costed.speedup or 0) - 1.8) <= WINDOW * 1.8 for e in first.evaluated[1.8])
    assert target.held_out[0].label == "recommended" and target.rounds[0] == len(first.evaluated[1.8]) >= 4
    names = {p.name for p in out.iterdir()}
    assert {"tuned-1.8x.yaml", "report.md", "pareto.png", "tune.json", "settings.json", "scores.jsonl"} <= names
    recipe = load_recipe_file(out / "tuned-1.8x.yaml")
    assert recipe.name == "tuned-1.8x"
    header = (out / "tuned-1.8x.yaml").read_text().splitlines()[:4]
    assert header[0].startswith("# ralu tune, ") and "fewer than the model's sampler" in header[1]
    image = ralu_core.accelerate(flux, recipe)(
        "a red circle", generator=torch.Generator().manual_seed(0), **SIZE, **CALL
    )
    assert image.images[0] is not None
    report = (out / "report.md").read_text()
    assert target.chosen.candidate.key in report and "dropped after round 1" in report

    journal = out / "scores.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # killed while writing its last score
    again = small_tune(flux, out=out)  # what a restarted tune does: read back every score, make the lost one
    assert again.images_made == 1
    assert journal.read_bytes().count(b"\n") == len(lines)  # the cut line replaced, not glued to the next
    saved = json.loads((out / "tune.json").read_text())
    assert saved["targets"][0]["chosen"] == target.chosen.candidate.key
    assert [t.held_out[0].metrics for t in again.targets] == [t.held_out[0].metrics for t in first.targets]

    # The earlier runs' time counts against a resumed tune's budget: as if they had spent 1000 s per image.
    slow = [json.loads(line) | {"seconds": 1000.0} for line in journal.read_text().splitlines()]
    journal.write_text("".join(json.dumps(line) + "\n" for line in slow))
    late = small_tune(flux, out=out, max_minutes=1.0)
    assert "stopped by the time budget after round 1" in late.target(1.8).note


class ScriptedScorer:
    """Scores by rule instead of by image: the fewer-steps control scores 0 on the first two selection samples
    (so the halving drops it) and 1 on the others; every other candidate 0.4 everywhere."""

    metrics: ClassVar[list[Any]] = []
    calls = 0
    spent_before = 0.0

    def __init__(self, control: str, first: list[SampleKey]) -> None:
        self.control, self.first = control, first

    def baseline(self, sample: SampleKey) -> None:
        return None

    def share(self, samples: Any, workers: Any) -> None:
        pass

    def owns(self, sample: SampleKey) -> bool:
        return True

    def fill(self, wanted: Any, advance: Any = None) -> None:
        pass

    def combined_score(self, key: str, recipe: Any, sample: SampleKey) -> float:
        if key == self.control:
            return 0.0 if sample in self.first else 1.0
        return 0.4

    def metric_values(self, key: str, recipe: Any, sample: SampleKey) -> dict[str, float]:
        return {}


def test_where_fewer_steps_do_as_well_tune_recommends_them(flux) -> None:  # type: ignore[no-untyped-def]
    registry = Registry.collect(create_plugin_manager())
    adapter = registry.resolve_adapter(flux)
    profile = counting(adapter).pipeline_flops_profile(flux, {**SIZE, **CALL})
    model = model_space(registry, adapter, 28, True)
    counter = CostCounter(registry, adapter, profile, 64, 64, 28)
    prompts = ("a", "b", "c", "d")
    settings = TuneSettings(
        model="tiny",
        prompts=prompts,
        seeds=(0, 1, 2),
        speedups=(1.8,),
        metrics=(),
        height=64,
        width=64,
        steps=28,
        max_candidates=4,
    )
    costed, _ = count_candidates(model, searched_strategies(registry), counter, [1.8])
    named = next(c.candidate for c in costed if c.candidate.builtin == "flux-baseline-5steps")
    assert named.family == FEWER_STEPS and named.label.endswith("(= flux-baseline-5steps)")  # one candidate, not two
    control = _best_control(costed, 1.8)
    assert control is not None
    selection, _ = split_samples(4, [0, 1, 2])
    scorer = ScriptedScorer(control.candidate.key, selection[:2])
    result = run_search(settings, model, searched_strategies(registry), counter, scorer, costed=costed)  # type: ignore[arg-type]
    target = result.target(1.8)
    dropped = next(e for e in result.evaluated[1.8] if e.key == control.candidate.key)
    assert dropped.dropped_at == 0  # the halving dropped it in the first round ...
    assert target.chosen.candidate.key == control.candidate.key  # ... and it is still what tune recommends
    assert "fewer steps" in target.note and target.selection_score == pytest.approx(2 / 4)


def test_bad_input_is_refused_before_any_image(flux, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RaluError, match=r"no candidate reaches 500x .* span \d+\.\d+x to \d+\.\d+x"):
        small_tune(flux, speedups=[500.0])
    with pytest.raises(RaluError, match="at least 2 prompts"):
        ralu_core.tune(flux, PROMPTS[:1], speedups=[3.0], **SIZE)
    with pytest.raises(RaluError, match="at least 2 prompts and 2 seeds"):
        small_tune(flux, seeds=[0])
    with pytest.raises(RaluError, match="prompt 4 repeats prompt 1"):
        ralu_core.tune(flux, [*PROMPTS[:3], PROMPTS[0]], speedups=[1.8], seeds=[0, 1], **SIZE)
    planted = tmp_path / "planted"
    planted.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (planted / "baseline").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RaluError, match="baseline is a link"):
        small_tune(flux, out=planted)
    with pytest.raises(RaluError, match="no image metric 'sharpness' is registered"):
        small_tune(flux, metrics=["sharpness"])
    with pytest.raises(RaluError, match="a FLOPs ratio above 1"):
        small_tune(flux, speedups=[0.5])
    with pytest.raises(RaluError, match=r"--max-minutes: the first round alone needs about .* --max-candidates 1"):
        small_tune(flux, max_minutes=1e-4)  # after the baseline's images, which time the model
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"model": "someone else's"}))
    with pytest.raises(RaluError, match="was made by a different tune"):
        small_tune(flux, out=other)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"")
    with pytest.raises(RaluError, match="holds files that no tune wrote"):
        small_tune(flux, out=stranger)


def test_two_launched_processes_choose_what_one_process_chooses(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`ralu tune` once under `torchrun` with two CPU processes and once in this process: each of the two makes
    the images of its samples, they exchange scores, and both runs choose the same and report the same numbers
    (images made anew in each: the same inputs give the same result). The command prints each recommendation."""
    args = [
        "tune",
        "--model",
        "flux-tiny",
        *(arg for prompt in PROMPTS for arg in ("--prompt", prompt)),
        *("--seeds", "0", "1", "--speedup", "1.8", "--max-candidates", "3", "--metric", "psnr"),
        *("--height", "64", "--width", "64", "--call-arg", "max_sequence_length=16"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    both = tmp_path / "two"
    done = subprocess.run(
        [*launcher, "-m", "ralu_core.cli", *args, "--out", str(both)], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    one = tmp_path / "one"
    capsys.readouterr()
    assert main([*args, "--out", str(one)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("1.8x: ") and str(one / "tuned-1.8x.yaml") in printed
    assert main(["tune", "--model", "flux-tiny", "--prompt", "a", "--speedup", "3", "--out", str(one)]) == 2
    assert "at least 2 prompts" in capsys.readouterr().err

    def outcome(folder: Path) -> Any:
        saved = json.loads((folder / "tune.json").read_text())
        return [(t["chosen"], t["selection_score"], t["held_out"], t["candidates"]) for t in saved["targets"]]

    assert outcome(both) == outcome(one)
    assert (both / "tuned-1.8x.yaml").read_text() == (one / "tuned-1.8x.yaml").read_text()

    def scored(path: Path) -> set[tuple[str, int, int]]:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return {(line["candidate"], line["prompt"], line["seed"]) for line in lines}

    first, second = scored(both / "scores.jsonl"), scored(both / "scores.1.jsonl")
    assert first and second and first.isdisjoint(second)  # each image made by one process only
    assert {(p, s) for _, p, s in first}.isdisjoint({(p, s) for _, p, s in second})  # split by sample


def other_adapters_pipeline(family: str) -> tuple[Any, dict[str, Any]]:
    if family == "sd3":
        from ralu_sd3.testing import make_sd3_pipeline

        return make_sd3_pipeline(seed=0), {"max_sequence_length": 8}
    from ralu_lumina.testing import make_lumina_pipeline

    return make_lumina_pipeline(seed=0), {"max_sequence_length": 8}


@pytest.mark.parametrize("family", ["sd3", "lumina"])
def test_a_tune_on_another_adapter_recommends_a_recipe_of_its_speedup(family: str) -> None:
    """The same search on the other adapters (SD3: CFG, its own baseline and built-in recipes; Lumina-Next: its
    own attention and text encoder), and the progress it reports: images, with the round's candidates."""
    pipe, call = other_adapters_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    stages: list[str] = []
    seen: list[int] = []

    class Recorded(Progress):
        def start(self, total: int) -> None:
            seen.append(total)

        def advance(self, done: int) -> None:
            seen.append(done)

        def describe(self, stage: str) -> None:
            stages.append(stage)

    result = ralu_core.tune(
        pipe,
        PROMPTS,
        speedups=[1.5],
        seeds=[0, 1],
        metrics=["psnr"],
        max_candidates=3,
        call_kwargs=call,
        height=64,
        width=64,
        progress=Recorded(),
    )
    chosen = result.target(1.5).chosen
    assert chosen.candidate.recipe.model in (family, None)
    assert (chosen.speedup or 0) >= 1.5 * (1 - WINDOW)  # in the window, or the control (which may be cheaper)
    families = {e.costed.candidate.family for e in result.evaluated[1.5]}
    assert RALU in families  # half resolution works on each model's grid
    ralu_core.accelerate(pipe, chosen.candidate.recipe)  # a valid recipe of the family
    assert stages[0].startswith("1.5x: ") and "candidates on 2 samples" in stages[0]
    total, steps = seen[0], seen[1:]
    assert steps == list(range(1, total + 1))  # the bar moves image by image and ends full
