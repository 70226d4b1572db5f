"""The FLUX recipes named after the paper's configurations run the paper's NT-DM schedules, and
`ralu schedule` shows exactly what they run next to what the solver would pick."""

from __future__ import annotations

import json

import pytest

from ralu_core import accelerate
from ralu_core.cli import main
from ralu_core.plugins import create_plugin_manager
from ralu_core.plugins.hookspecs import hookimpl
from ralu_core.sampling.ntdm import rewind_start

# Published values (RALU, arXiv 2507.08422; 4x from the authors' release): shifts per stage, c, ends.
PUBLISHED = {
    "ralu-flux-4x": ([5.019, 2.589, 2.226], 0.02506, [0.3, 0.45, 1.0]),
    "ralu-flux-5x": ([5.12, 2.64, 2.25], 0.0177, [0.3, 0.45, 1.0]),
    "ralu-flux-7x": ([8.14, 2.86, 2.19], 0.0255, [0.2, 0.3, 1.0]),
}


def schedule_json(capsys, *argv: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    code = main(["schedule", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_paper_recipe_reports_the_published_schedule_and_the_solved_one(capsys, recipe: str) -> None:  # type: ignore[no-untyped-def]
    shifts, c, ends = PUBLISHED[recipe]
    data = schedule_json(capsys, "--recipe", recipe)
    assert data["mode"] == "pinned" and data["source"]
    assert data["shifts"] == shifts and data["c"] == c and data["ends"] == ends
    assert data["starts"][1:] == pytest.approx([rewind_start(e, c) for e in ends[:-1]], abs=1e-12)
    assert [s[0] for s in data["sigmas"]] == pytest.approx([1 - s for s in data["starts"]])
    solved = data["solved"]
    assert solved["shifts"] != shifts  # the solver finds other values for the same plan ...
    assert solved["js_distance"] <= data["js_distance"] < solved["js_distance"] + 1e-3  # ... barely better


def test_a_published_plan_shows_both_the_solved_and_the_published_values(capsys) -> None:  # type: ignore[no-untyped-def]
    data = schedule_json(capsys, "--steps", "4", "5", "6", "--ends", "0.3", "0.45", "1.0")
    assert data["c"] < 0.01  # the solver's optimum rewinds much deeper than the paper's c = 0.0177
    [published] = data["published"]
    # ralu-caching, where installed, adds recipes on the same plan (ralu-flux-5x-toca)
    assert published["recipes"][0] == "ralu-flux-5x" and published["c"] == 0.0177
    assert published["js_distance"] > data["js_distance"]
    code = main(["schedule", "--steps", "4", "5", "6", "--ends", "0.3", "0.45", "1.0"])
    text = capsys.readouterr().out
    assert code == 0 and "NT-DM solved for this plan" in text and "published (RALU paper" in text
    assert schedule_json(capsys, "--steps", "3", "5", "6", "--ends", "0.3", "0.45", "1.0")["published"] == []


def test_a_baseline_recipe_says_its_sigmas_are_the_pipelines(capsys) -> None:  # type: ignore[no-untyped-def]
    data = schedule_json(capsys, "--recipe", "flux-baseline")
    assert data["schedule"] == "uniform" and data["sigmas"] is None and "pipeline's own sigmas" in data["note"]


def test_schedule_needs_a_plan_or_a_recipe(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["schedule", "--steps", "2", "3"]) == 2
    assert "--recipe NAME" in capsys.readouterr().err


class SigmaRecorder:
    def __init__(self) -> None:
        self.stages: dict[int, list[float]] = {}

    @hookimpl
    def ralu_on_step_end(self, event) -> None:  # type: ignore[no-untyped-def]
        self.stages.setdefault(event.stage, []).append(event.sigma)


@pytest.mark.parametrize("recipe", ["ralu-flux-5x", "ralu-flux-7x"])
def test_the_engine_runs_the_reported_schedule(capsys, pipe, recipe: str) -> None:  # type: ignore[no-untyped-def]
    """The sigmas every step of a real call starts from are the ones `ralu schedule --recipe` prints; the
    rewinds are the published c's (stage 2 of 5x starts at sigma 0.946, not the solver's 0.963)."""
    reported = schedule_json(capsys, "--recipe", recipe)
    recorder = SigmaRecorder()
    fast = accelerate(pipe, recipe, plugin_manager=create_plugin_manager(plugins=[recorder]))
    fast("a red circle", height=64, width=64, max_sequence_length=16, output_type="latent")
    ran = [recorder.stages[k] for k in sorted(recorder.stages)]
    assert ran == [pytest.approx(sigmas[:-1], abs=1e-6) for sigmas in reported["sigmas"]]
    _, c, ends = PUBLISHED[recipe]
    assert [stage[0] for stage in ran[1:]] == pytest.approx([1 - rewind_start(e, c) for e in ends[:-1]], abs=1e-6)
