"""Paired comparisons of bench reports: counts per (prompt, seed), the exact sign test, `ralu compare`."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import binomtest

from ralu_core.cli import main
from ralu_core.errors import RaluError
from ralu_core.measurement.paired import compare, sign_test


@pytest.mark.parametrize(("wins", "losses"), [(3, 35), (8, 18), (12, 6), (0, 5), (7, 7), (1, 0), (600, 700)])
def test_sign_test_is_the_exact_two_sided_binomial_test(wins: int, losses: int) -> None:
    expected = binomtest(wins, wins + losses, 0.5).pvalue
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-12)
    assert sign_test(wins, losses) == sign_test(losses, wins)


def test_no_differing_pairs_gives_p_one() -> None:
    assert sign_test(0, 0) == 1.0


def report(rows: list[tuple[str, str, dict[str, float]]]) -> dict:  # type: ignore[type-arg]
    return {"samples": [{"recipe": r, "prompt": p, "seed": 0, "seconds": 0.1, "scores": s} for r, p, s in rows]}


def test_compare_pairs_by_prompt_counts_repeats_and_skips_declined_scores() -> None:
    data = report(
        [
            ("a", "one", {"q": 1.0, "psnr": math.inf}),
            ("b", "one", {"q": 0.0, "psnr": 30.0}),
            ("a", "two", {"q": 0.0}),  # psnr declined for a on "two": that pair counts for q only
            ("b", "two", {"q": 1.0, "psnr": 20.0}),
            ("a", "one", {"q": 1.0, "psnr": math.inf}),  # the prompt set repeats "one": a pair of its own
            ("b", "one", {"q": 0.0, "psnr": 30.0}),
            ("b", "three", {"q": 1.0}),  # a never ran "three"
        ]
    )
    q, psnr = compare(data, "a", "b", ["q", "psnr"])
    assert (q.pairs, q.first_higher, q.second_higher, q.equal) == (3, 2, 1, 0)
    assert q.first_mean == pytest.approx(2 / 3) and q.second_mean == pytest.approx(1 / 3)
    assert (psnr.pairs, psnr.first_higher, psnr.second_higher) == (2, 2, 0)
    assert math.isnan(psnr.first_mean) and psnr.second_mean == 30.0  # infinite PSNRs are left out of means
    assert q.p_value == sign_test(2, 1)


def test_compare_refuses_unknown_recipes_and_metrics() -> None:
    data = report([("a", "one", {"q": 1.0}), ("b", "one", {"q": 0.0})])
    with pytest.raises(RaluError, match="recipe 'c' is not in this report; it has: a, b"):
        compare(data, "a", "c")
    with pytest.raises(RaluError, match="not scored for both recipes; scored: q"):
        compare(data, "a", "b", ["psnr"])


def test_reports_without_per_sample_scores_are_matched_only_when_unambiguous() -> None:
    old = {
        "samples": [{"recipe": r, "prompt": p, "seed": 0} for p in ("x", "y") for r in ("a", "b")],
        "scores": {"a": {"q": [1.0, 0.0]}, "b": {"q": [0.0, 0.0], "words": [3.0]}},
    }
    [q] = compare(old, "a", "b", ["q"])
    assert (q.first_higher, q.second_higher, q.equal) == (1, 0, 1)
    with pytest.raises(RaluError, match="cannot be matched to prompts"):
        compare(old, "b", "a", ["words"])


def test_compare_cli_prints_a_table_and_json(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report([("a", p, {"q": 1.0}) for p in "xyz"] + [("b", p, {"q": 0.0}) for p in "xyz"])))
    assert main(["compare", str(tmp_path), "a", "b"]) == 0
    out = capsys.readouterr().out
    assert "3 pairs" in out and "q" in out and "0.25" in out  # 3 wins of 3: p = 2 / 8
    assert main(["compare", str(path), "a", "b", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["first_higher"] == 3 and row["equal"] == 0 and row["p_value"] == 0.25
    assert main(["compare", str(tmp_path / "missing.json"), "a", "b"]) == 2
    assert "cannot read the bench report" in capsys.readouterr().err


def test_compare_pairs_a_recipe_across_two_runs(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    before = report([("a", p, {"q": 0.0}) for p in "xyz"])
    after = report([("a", p, {"q": float(p != "z")}) for p in "xyzw"])  # a prompt only the new run has
    [q] = compare(after, "a", "a", second_report=before)
    assert (q.pairs, q.first_higher, q.second_higher) == (3, 2, 0)
    (tmp_path / "before.json").write_text(json.dumps(before))
    (tmp_path / "after.json").write_text(json.dumps(after))
    argv = ["compare", str(tmp_path / "after.json"), "a", "a", "--second-report", str(tmp_path / "before.json")]
    assert main(argv) == 0
    assert "from " in capsys.readouterr().out


GOOD = {"samples": [{"recipe": "a", "prompt": "x", "seed": 0, "scores": {"q": 1.0}}]}


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda r: [r], "its top level is list, not an object"),
        (lambda r: {**r, "samples": None}, "`samples` is NoneType, not a list of samples"),
        (lambda r: {**r, "samples": "x"}, "`samples` is str, not a list of samples"),
        (lambda r: {"samples": [1]}, "samples[0] is int, not an object"),
        (lambda r: {"samples": [{"recipe": "a", "seed": 0}]}, "samples[0] has no `recipe` and `prompt` strings"),
        (
            lambda r: {"samples": [{"recipe": "a", "prompt": "x", "seed": "0"}]},
            "samples[0].seed is '0', not an integer",
        ),
        (lambda r: {"samples": [{**r["samples"][0], "scores": [1]}]}, "samples[0].scores is list, not an object"),
        (lambda r: {"samples": [{**r["samples"][0], "scores": {"q": "high"}}]}, "samples[0].scores.q is 'high'"),
        (lambda r: {"samples": [{**r["samples"][0], "scores": {"q": math.nan}}]}, "samples[0].scores.q is nan"),
        (lambda r: {**r, "scores": []}, "`scores` is not an object of recipes' score lists"),
        (lambda r: {**r, "scores": {"a": {"q": [1.0, "x"]}}}, "scores.a.q is not a list of numbers"),
    ],
)
def test_a_malformed_report_is_refused_in_one_line(tmp_path, capsys, damage, words) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(damage(GOOD)))
    assert main(["compare", str(path), "a", "b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} is not a ralu bench report: {words}" in err


def test_a_deeply_nested_report_and_a_declined_score_are_handled(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "report.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["compare", str(path), "a", "b"]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    declined = {"samples": [{"recipe": r, "prompt": "x", "seed": 0, "scores": {"q": None, "p": 1.0}} for r in "ab"]}
    [p] = compare(declined, "a", "b")  # q declined by both: only p is compared
    assert p.metric == "p" and p.pairs == 1
    # `ralu bench` writes a declined score as null in the recipes' score lists too: such a report is read (it
    # was refused as "not a list of numbers"), with per-sample scores and with the lists alone.
    listed = {**declined, "scores": {r: {"q": [None], "p": [1.0]} for r in "ab"}}
    assert [c.metric for c in compare(listed, "a", "b")] == ["p"]
    bare = {
        "samples": [{k: v for k, v in s.items() if k != "scores"} for s in declined["samples"]],
        "scores": listed["scores"],
    }
    assert [c.metric for c in compare(bare, "a", "b")] == ["p"]
    with pytest.raises(RaluError, match="the second report is not a ralu bench report"):
        compare(declined, "a", "b", second_report={"samples": []})


def test_a_report_is_standard_json_and_its_infinite_scores_compare_as_before(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """bench wrote Python's `Infinity` (not JSON) for the PSNR of an image identical to the baseline's."""
    import numpy as np

    from ralu_core.measurement.paired import json_safe

    samples = [
        ("a", "x", {"psnr": math.inf, "q": np.float32(0.5)}),
        ("b", "x", {"psnr": 30.0, "q": math.nan}),
        ("a", "y", {"psnr": -math.inf}),
        ("b", "y", {"psnr": 20.0}),
    ]
    text = json.dumps(json_safe(report(samples)), allow_nan=False)  # raises on any non-finite float left
    assert "Infinity" in text and "NaN" not in text
    path = tmp_path / "report.json"
    path.write_text(text)
    assert main(["compare", str(path), "a", "b", "--metric", "psnr", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["first_higher"], row["second_higher"]) == (1, 1)  # +inf beats 30 dB, -inf loses to 20 dB
