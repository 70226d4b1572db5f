"""What ``ralu tune`` tells a user about its outcome, without any model: a speed-up in a gap between the reachable
ratios is refused naming its neighbours, held-out means leave images equal to the baseline's out and count them,
and a resumed tune's time budget counts what its earlier runs spent."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import pytest

from ralu_core.errors import RaluError
from ralu_core.recipes.model import Recipe, Stage, StrategyRef
from ralu_core.tuning.cost import Costed
from ralu_core.tuning.journal import FolderJournal, SampleKey
from ralu_core.tuning.report import _spread
from ralu_core.tuning.search import check_budget, check_targets, held_out_numbers
from ralu_core.tuning.space import FEWER_STEPS, make_candidate


def costed(steps: int, speedup: float) -> Costed:
    recipe = Recipe(name=f"fewer-{steps}", schedule=StrategyRef(name="linear"), stages=(Stage(steps=steps),))
    return Costed(candidate=make_candidate(recipe, FEWER_STEPS, f"{steps} steps"), speedup=speedup)


def test_a_speedup_in_a_gap_names_the_reachable_ratios_on_either_side() -> None:
    pool = [costed(14, 1.9), costed(7, 3.6), costed(2, 9.0)]
    check_targets(pool, [3.5], 28)  # within 5 % of 3.6
    with pytest.raises(RaluError) as refused:
        check_targets(pool, [3.5, 6.0], 28)
    message = str(refused.value)
    assert "no candidate reaches 6x" in message and "1.90x to 9.00x" in message
    assert "6x falls between 3.60x and 9.00x" in message
    with pytest.raises(RaluError, match=r"span 1\.90x to 9\.00x fewer FLOPs than its sampler at 28 steps;"):
        check_targets(pool, [20.0], 28)  # beyond the range: no gap to name


class InfiniteOnce:
    """Scores like a metric plugin would: PSNR is infinite where the image equals the baseline's."""

    metrics: ClassVar[list[object]] = []

    def metric_values(self, key: str, recipe: Recipe, sample: SampleKey) -> dict[str, float]:
        return {"psnr": math.inf if sample.prompt == 0 else 30.0 + sample.prompt, "ssim": 1.0}


def test_held_out_means_count_identical_images_instead_of_dropping_them_silently() -> None:
    candidate = costed(14, 1.9)
    held = [SampleKey(0, 5), SampleKey(1, 5), SampleKey(3, 5)]
    numbers = held_out_numbers(InfiniteOnce(), candidate, "recommended", held, 0.9)  # type: ignore[arg-type]
    assert numbers.metrics["psnr"] == pytest.approx((32.0, 1.0))  # the finite ones: 31 and 33
    assert numbers.identical == {"psnr": 1} and numbers.samples == 3
    assert numbers.metrics["ssim"] == (1.0, 0.0)
    shown = _spread(numbers.metrics, numbers.identical)
    assert "psnr 32 ± 1 (1 identical to the baseline: infinite, left out of the mean)" in shown
    assert "ssim 1 ± 0" in shown and shown.count("identical") == 1


def test_a_resumed_tune_counts_the_time_its_earlier_runs_spent(tmp_path: Path) -> None:
    settings = {"model": "m", "prompts": ["a", "b"]}
    first = FolderJournal(tmp_path, settings)
    first.open()
    assert first.spent_before == 0.0
    first.record("k1", SampleKey(0, 0), {"psnr": 30.0}, seconds=12.5)
    first.record("k2", SampleKey(0, 0), {"psnr": math.inf}, seconds=7.5)
    first.close()
    other = tmp_path / "scores.1.jsonl"  # another process's images: its own budget
    other.write_text(json.dumps({"candidate": "k3", "prompt": 1, "seed": 0, "scores": {}, "seconds": 100}) + "\n")
    again = FolderJournal(tmp_path, settings)
    again.open()
    assert again.spent_before == pytest.approx(20.0)
    assert again.scored("k2", SampleKey(0, 0)) == {"psnr": math.inf} and again.scored("k3", SampleKey(1, 0)) == {}
    again.close()

    pools = {3.0: [costed(9, 3.0), costed(8, 3.1)]}
    first_round = [SampleKey(0, 0), SampleKey(1, 0)]
    with pytest.raises(RaluError, match=r"are left \(earlier runs of this tune spent 0.3\)"):
        check_budget(pools, first_round, 30.0, 10.0, spent_before=20.0)
    # The images an earlier run kept cost nothing: only the second candidate's second sample is left to make,
    # 30 s / 3.1 = 9.7 s, which fits in the 10 s left.
    kept_key = pools[3.0][0].candidate.key
    check_budget(pools, first_round, 30.0, 10.0, 20.0, lambda key, sample: key == kept_key or sample == first_round[0])
