"""Paired comparisons of two recipes in a ``ralu bench`` report.

Each recipe ran the same (prompt, seed) pairs, so per metric we count on how many pairs each one
scores higher and test the split with the exact two-sided sign test over the pairs where they differ:
the question "does A beat B on this prompt set?" without assuming anything about the score's scale.
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import attrs

from ralu_core.errors import RaluError

INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf}
"""How a report writes an infinite score (a PSNR of identical images) so that it stays standard JSON."""


def score_value(value: Any) -> float:
    """A report's score as a float (its infinities are written as strings)."""
    return INFINITIES[value] if isinstance(value, str) else float(value)


def json_safe(value: Any) -> Any:
    """`value` with every infinite float written as ``"Infinity"``/``"-Infinity"`` and NaN as null: JSON that
    every reader takes (Python's own ``Infinity`` is not JSON), read back by `score_value`."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy's floats too
        number = float(value)
        if not math.isfinite(number):
            return None if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        return number
    if isinstance(value, Mapping):
        return {key: json_safe(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


Key = tuple[str, int, int]
"""(prompt, seed, occurrence): a prompt set may repeat a prompt, and each repeat is its own pair."""


def _keys(samples: list[Mapping[str, Any]]) -> list[Key]:
    seen: dict[tuple[str, int], int] = {}
    keys = []
    for s in samples:
        base = (s["prompt"], s["seed"])
        keys.append((*base, seen.get(base, 0)))
        seen[base] = seen.get(base, 0) + 1
    return keys


@attrs.frozen(kw_only=True)
class PairedComparison:
    metric: str
    first: str
    second: str
    pairs: int
    first_mean: float
    second_mean: float
    first_higher: int
    second_higher: int
    p_value: float

    @property
    def equal(self) -> int:
        return self.pairs - self.first_higher - self.second_higher

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"equal": self.equal}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the chance of a split at least this uneven among `wins + losses`
    fair coin flips (ties are left out before calling)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = float(Fraction(sum(math.comb(n, k) for k in range(min(wins, losses) + 1)), 1 << n))  # exact for any n
    return min(1.0, 2.0 * tail)


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(statistics.fmean(finite)) if finite else math.nan


def check_report(report: Any, source: str = "the report") -> Mapping[str, Any]:
    """`report` if it has the shape `ralu bench` writes (the parts a comparison reads), else a RaluError that
    says what is wrong: a hand-edited or truncated report must not end in a foreign traceback."""

    def bad(what: str) -> RaluError:
        return RaluError(f"{source} is not a ralu bench report: {what}")

    def is_number(value: Any) -> bool:  # inf is a score (PSNR of identical images); NaN orders nothing
        if isinstance(value, str):
            return value in INFINITIES
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)

    if not isinstance(report, Mapping):
        raise bad(f"its top level is {type(report).__name__}, not an object")
    samples = report.get("samples")
    if not isinstance(samples, list) or not samples:
        found = "missing" if "samples" not in report else "empty" if samples == [] else type(samples).__name__
        raise bad(f"`samples` is {found}, not a list of samples")
    for index, sample in enumerate(samples):
        where = f"samples[{index}]"
        if not isinstance(sample, Mapping):
            raise bad(f"{where} is {type(sample).__name__}, not an object")
        if not isinstance(sample.get("recipe"), str) or not isinstance(sample.get("prompt"), str):
            raise bad(f"{where} has no `recipe` and `prompt` strings")
        seed = sample.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad(f"{where}.seed is {seed!r}, not an integer")
        scores = sample.get("scores", {})
        if not isinstance(scores, Mapping):
            raise bad(f"{where}.scores is {type(scores).__name__}, not an object")
        for metric, value in scores.items():
            if value is not None and not is_number(value):
                raise bad(f"{where}.scores.{metric} is {value!r}, not a number")
    lists = report.get("scores", {})
    if not isinstance(lists, Mapping) or not all(isinstance(v, Mapping) for v in lists.values()):
        raise bad("`scores` is not an object of recipes' score lists")
    for recipe, metrics in lists.items():
        for metric, values in metrics.items():
            # None: the metric declined that image (edge PSNR of an image without edges), as `ralu bench` writes it
            if not isinstance(values, list) or not all(v is None or is_number(v) for v in values):
                raise bad(f"scores.{recipe}.{metric} is not a list of numbers (or nulls, for declined images)")
    return report


def per_sample_scores(
    report: Mapping[str, Any], recipe: str, required: Iterable[str] = ()
) -> dict[Key, dict[str, float]]:
    """(prompt, seed, occurrence) -> metric -> value for one recipe of a report.

    Reports since per-sample scores were recorded carry them on each sample; for older ones the
    recipe's score lists are matched to its samples in order, which is exact only when no metric
    declined an image (then its list has one value per sample). Other lists are left out, and a
    `required` metric among them is refused.
    """
    samples = [s for s in report["samples"] if s["recipe"] == recipe]
    if not samples:
        known = ", ".join(sorted({s["recipe"] for s in report["samples"]}))
        raise RaluError(f"recipe {recipe!r} is not in this report; it has: {known}")
    keys = _keys(samples)
    if all("scores" in s for s in samples):  # a metric that declined an image holds None there: no score
        return {
            key: {m: score_value(v) for m, v in s["scores"].items() if v is not None}
            for key, s in zip(keys, samples, strict=True)
        }
    table: dict[Key, dict[str, float]] = {key: {} for key in keys}
    for metric, values in report.get("scores", {}).get(recipe, {}).items():
        if len(values) != len(samples):
            if metric in required:
                raise RaluError(
                    f"this report has no per-sample scores and {metric!r} scored {len(values)} of {recipe!r}'s "
                    f"{len(samples)} images, so its values cannot be matched to prompts; rerun `ralu bench`"
                )
            continue
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                table[key][metric] = score_value(value)
    return table


def compare(
    report: Mapping[str, Any],
    first: str,
    second: str,
    metrics: Iterable[str] = (),
    second_report: Mapping[str, Any] | None = None,
) -> list[PairedComparison]:
    """Per metric scored for both recipes (or the given ones), on the (prompt, seed) pairs both scored.

    `second` is read from `second_report` when given: scores are deterministic for a seed, so two runs
    on the same prompts and seeds pair up (e.g. a recipe before and after a change). Paired metrics
    must then have been scored against the same baseline images.
    """
    metrics = list(metrics)
    check_report(report)
    other = report if second_report is None else check_report(second_report, "the second report")
    a, b = per_sample_scores(report, first, metrics), per_sample_scores(other, second, metrics)
    keys = [k for k in a if k in b]
    available = sorted({m for k in keys for m in a[k]} & {m for k in keys for m in b[k]})
    chosen = metrics or available
    missing = [m for m in chosen if m not in available]
    if missing:
        raise RaluError(f"metric(s) {', '.join(missing)} not scored for both recipes; scored: {', '.join(available)}")
    results = []
    for metric in chosen:
        both = [(a[k][metric], b[k][metric]) for k in keys if metric in a[k] and metric in b[k]]
        higher = sum(x > y for x, y in both)
        lower = sum(x < y for x, y in both)
        results.append(
            PairedComparison(
                metric=metric,
                first=first,
                second=second,
                pairs=len(both),
                first_mean=_mean(x for x, _ in both),
                second_mean=_mean(y for _, y in both),
                first_higher=higher,
                second_higher=lower,
                p_value=sign_test(higher, lower),
            )
        )
    return results
