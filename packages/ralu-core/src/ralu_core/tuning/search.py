"""``ralu tune``'s search: exact FLOPs first, then successive halving on images, then held-out numbers.

1. Every candidate of the space (`space.py`) is counted on the meta device; those within ± 5 % of a requested
   speed-up serve it. Up to `max_candidates` per speed-up are kept, taken in turn from each family (fewer
   steps, RALU, RAS, their combinations with caches, the built-in recipes), nearest in FLOPs first.
2. The prompts and seeds are split: every third prompt, and the last third of the seeds, are held out. The
   candidates are scored on the others by successive halving: all of them on `first_samples` samples, the best
   third on twice as many, and so on, until one is left.
3. The best fewer-steps control of the speed-up is scored on every selection sample too: where it scores at
   least as well as the winner, the control is what tune recommends.
4. The recommendation, the control and the best built-in recipe of the speed-up are then scored on the held-out
   samples, which chose nothing: those are the numbers reported.

Everything is ordered by content (scores, then candidate keys), so the same inputs give the same result.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ralu_core.errors import RaluError
from ralu_core.tuning.cost import WINDOW, CostCounter, Costed, reachable, serves
from ralu_core.tuning.journal import SampleKey
from ralu_core.tuning.scoring import SCORE, Scorer, combined
from ralu_core.tuning.space import (
    BUILTIN,
    FEWER_STEPS,
    RALU,
    RALU_CACHE,
    RALU_RAS,
    RAS,
    STEPS_CACHE,
    ModelSpace,
    Searched,
    addition,
    make_candidate,
    structural_candidates,
)
from ralu_core.tuning.workers import OneProcess, Workers

GAIN_MARGIN = 1.25
"""A cache or RAS added to a RALU plan is counted only where the plan alone, sped up by the most that addition
gained on the model's sampler (times this margin), could reach the slowest speed-up asked for. A cache gains
less in a plan than on the sampler: each stage starts with full steps, and a plan's decode weighs more."""
FAMILY_ORDER = (FEWER_STEPS, RALU, RAS, RALU_RAS, RALU_CACHE, STEPS_CACHE, BUILTIN)
ON_THE_SAMPLER = (RAS, STEPS_CACHE)
"""Additions counted on the model's own sampler (which `structural_candidates` yields before the plans)."""
COMBINED_WITH_PLANS = (RALU_RAS, RALU_CACHE)


@attrs.frozen(kw_only=True)
class TuneSettings:
    """What defines a tune: a folder made with other settings is refused on resume."""

    model: str
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    speedups: tuple[float, ...]
    metrics: tuple[str, ...]
    height: int
    width: int
    steps: int
    max_candidates: int = 36
    first_samples: int = 2
    keep_share: int = 3
    include_attention: bool = True
    fingerprint: dict[str, Any] = attrs.field(factory=dict, hash=False)
    """The checkpoint, the denoiser's config and dtype, the call's arguments (see `call_fingerprint`)."""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {
            "prompts": list(self.prompts),
            "seeds": list(self.seeds),
            "speedups": list(self.speedups),
            "metrics": list(self.metrics),
        }


def split_samples(prompts: int, seeds: Sequence[int]) -> tuple[list[SampleKey], list[SampleKey]]:
    """(selection samples in a fixed shuffled order, held-out samples): every third prompt counted from the last,
    and the last third of the seeds, are held out, so no held-out number comes from a prompt or seed the choice
    was made on. At least 2 held-out samples, so that their spread means something."""
    if prompts < 2 or len(seeds) < 2:
        raise RaluError(
            "ralu tune needs at least 2 prompts and 2 seeds: it chooses on some and reports on others (give "
            "--prompt more than once, --prompts FILE or --prompt-set NAME --num-prompts N, and e.g. --seeds 0 1 2)"
        )
    held_prompts = set(range(prompts - 1, -1, -3))
    held_seeds = set(seeds[-max(1, len(seeds) // 3) :])
    selection = [SampleKey(p, s) for s in seeds if s not in held_seeds for p in range(prompts) if p not in held_prompts]
    held = [SampleKey(p, s) for s in seeds if s in held_seeds for p in range(prompts) if p in held_prompts]
    if len(held) < 2 or not selection:
        raise RaluError(
            f"ralu tune holds out every third prompt and the last third of the seeds, and {prompts} prompts with "
            f"{len(seeds)} seeds leave {len(held)} held-out sample(s); give at least 4 prompts (or 6 seeds)"
        )
    random.Random(0).shuffle(selection)
    return selection, held


@attrs.define
class Evaluated:
    """A candidate's part in one speed-up's search."""

    costed: Costed
    target: float
    rounds: list[tuple[int, float]] = attrs.field(factory=list)
    """(samples, mean score) for each round it ran in."""
    dropped_at: int | None = None
    """The round after which it was dropped; None: it won (or was scored as a control)."""

    @property
    def key(self) -> str:
        return self.costed.candidate.key

    @property
    def last_score(self) -> float | None:
        return self.rounds[-1][1] if self.rounds else None


@attrs.frozen(kw_only=True)
class HeldOut:
    label: str
    key: str
    family: str
    speedup: float
    selection_score: float | None
    metrics: dict[str, tuple[float, float]]
    """Metric (and ``score``) -> (mean, standard deviation) over the held-out samples. A metric's infinite values
    (PSNR of an image equal to the baseline's) are left out of its mean and counted in `identical`."""
    identical: dict[str, int] = attrs.field(factory=dict)
    """Metric -> held-out samples on which it was infinite (the image equals the baseline's)."""
    samples: int = 0


@attrs.frozen(kw_only=True)
class TargetResult:
    target: float
    chosen: Costed
    selection_score: float
    held_out: tuple[HeldOut, ...]
    """The recommendation first, then the fewer-steps control and the best built-in recipe where there are."""
    note: str = ""
    first_score: float | None = None
    """The recommendation's score on the first round's samples, which every candidate of the speed-up ran (what
    ``pareto.png`` plots, so that its points rest on the same samples)."""
    candidates: int = 0
    rounds: tuple[int, ...] = ()
    """Candidates scored in each round."""


@attrs.define
class TuneResult:
    settings: TuneSettings
    costed: list[Costed]
    evaluated: dict[float, list[Evaluated]]
    targets: list[TargetResult]
    notes: list[str]
    selection: list[SampleKey]
    held: list[SampleKey]
    seconds: float = 0.0
    images_made: int = 0

    def target(self, speedup: float) -> TargetResult:
        return next(t for t in self.targets if t.target == speedup)


def count_candidates(
    model: ModelSpace, searched: Searched, counter: CostCounter, speedups: Sequence[float], prune: bool = True
) -> tuple[list[Costed], int]:
    """Every candidate's FLOPs, skipping (where `prune`) combinations whose plan is already too fast, or too slow
    for what the addition gained on the model's sampler (`GAIN_MARGIN`); returns them and how many were skipped
    so."""
    slowest, fastest = min(speedups), max(speedups)
    base_costs: dict[str, Costed] = {}
    gains: dict[str, float] = {}
    """What each addition (a cache or RAS) gained on the model's own sampler at most: speed-up with / without."""
    seen: set[str] = set()
    position: dict[str, int] = {}
    costed: list[Costed] = []
    skipped = 0
    for candidate, base in structural_candidates(model, searched):
        if candidate.key in position and candidate.builtin is not None:  # a built-in recipe tune generated too
            known = costed[position[candidate.key]]
            named = attrs.evolve(
                known.candidate, builtin=candidate.builtin, label=f"{known.candidate.label} (= {candidate.builtin})"
            )
            costed[position[candidate.key]] = attrs.evolve(known, candidate=named)
            continue
        if candidate.key in seen:
            continue
        seen.add(candidate.key)
        plan_speed = None
        if base is not None and prune:
            plan = make_candidate(base, "plan", "plan")
            if plan.key not in base_costs:
                base_costs[plan.key] = counter.cost(plan)
            plan_speed = base_costs[plan.key].speedup
            if plan_speed is None or plan_speed > fastest * (1 + WINDOW):
                skipped += 1
                continue
            gain = gains.get(addition(candidate.recipe)) if candidate.family in COMBINED_WITH_PLANS else None
            if gain is not None and plan_speed * gain * GAIN_MARGIN < slowest * (1 - WINDOW):
                skipped += 1
                continue
        position[candidate.key] = len(costed)
        costed.append(counter.cost(candidate))
        speed = costed[-1].speedup
        if candidate.family in ON_THE_SAMPLER and plan_speed and speed:
            key = addition(candidate.recipe)
            gains[key] = max(gains.get(key, 0.0), speed / plan_speed)
    return costed, skipped


def pick(pool: Sequence[Costed], target: float, limit: int, control: Costed | None = None) -> list[Costed]:
    """`limit` of `pool`, one family after another in turn, nearest to `target` in FLOPs first, plus every
    built-in recipe of the pool and the fewer-steps control where it is in the pool (these may exceed `limit`)."""
    families: dict[str, list[Costed]] = {}
    kept = {control.candidate.key} if control is not None else set()
    chosen = [c for c in pool if c.candidate.key in kept]
    for c in sorted(pool, key=lambda c: (abs((c.speedup or 0) - target), c.candidate.key)):
        if c.candidate.key not in kept:
            families.setdefault(c.candidate.family, []).append(c)
    chosen += families.pop(BUILTIN, [])
    limit += len(chosen)
    order = [f for f in FAMILY_ORDER if f in families] + sorted(set(families) - set(FAMILY_ORDER))
    while len(chosen) < limit and any(families.get(f) for f in order):
        for family in order:
            if families.get(family) and len(chosen) < limit:
                chosen.append(families[family].pop(0))
    return chosen


def round_sizes(candidates: int, samples: int, first: int, keep_share: int) -> list[tuple[int, int]]:
    """(candidates, samples) of each round of successive halving."""
    sizes = []
    alive, used = candidates, min(first, samples)
    while True:
        sizes.append((alive, used))
        if alive <= 1:
            return sizes
        kept = max(1, math.ceil(alive / keep_share))
        if kept == 1:
            return sizes  # this round's best wins (and is then scored on every selection sample)
        alive, used = kept, min(samples, used * 2)


class Progress:
    """Told about each image scored (or read back), for a progress bar with an ETA."""

    def start(self, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def describe(self, stage: str) -> None:
        """Where the search is: the speed-up, the round and the candidates scored in it."""

    def close(self) -> None:
        pass


def halving(
    entries: list[Evaluated],
    samples: Sequence[SampleKey],
    score: Callable[[Evaluated, SampleKey], float],
    first: int,
    keep_share: int,
    deadline: float | None = None,
    prepare: Callable[[Sequence[Evaluated], Sequence[SampleKey]], None] = lambda entries, samples: None,
    past: Callable[[float | None], bool] = lambda deadline: deadline is not None and time.monotonic() > deadline,
) -> tuple[Evaluated, str]:
    """Successive halving over `entries`; returns the winner and a note where the deadline cut it short.
    `prepare` measures a round's scores before they are read (split over processes); `past` tells, the same in
    every process, whether the deadline has passed."""
    alive = list(entries)
    note = ""
    sizes = round_sizes(len(alive), len(samples), first, keep_share)
    for round_index, (_, used) in enumerate(sizes):
        prepare(alive, samples[:used])
        for entry in alive:
            values = [score(entry, s) for s in samples[:used]]
            entry.rounds.append((used, statistics.fmean(values)))
        alive.sort(key=lambda e: (-(e.last_score or 0.0), e.key))
        if len(alive) == 1:
            break
        kept = 1 if round_index == len(sizes) - 1 else max(1, math.ceil(len(alive) / keep_share))
        if past(deadline):
            kept, note = 1, f"stopped by the time budget after round {round_index + 1}"
        for entry in alive[kept:]:
            entry.dropped_at = round_index
        alive = alive[:kept]
        if note:
            break
    return alive[0], note


def held_out_numbers(
    scorer: Scorer,
    costed: Costed,
    label: str,
    held: Sequence[SampleKey],
    selection_score: float | None,
) -> HeldOut:
    per_sample = [scorer.metric_values(costed.candidate.key, costed.candidate.recipe, sample) for sample in held]
    names = sorted({name for values in per_sample for name in values})
    metrics: dict[str, tuple[float, float]] = {}
    identical: dict[str, int] = {}
    for name in names:
        values = [v[name] for v in per_sample if name in v and math.isfinite(v[name])]
        infinite = sum(1 for v in per_sample if name in v and math.isinf(v[name]))
        if values:
            metrics[name] = (statistics.fmean(values), statistics.pstdev(values))
        if infinite:
            identical[name] = infinite
    combined_values = [combined(v, scorer.metrics) for v in per_sample]
    metrics[SCORE] = (statistics.fmean(combined_values), statistics.pstdev(combined_values))
    return HeldOut(
        label=label,
        key=costed.candidate.key,
        family=costed.candidate.family,
        speedup=costed.speedup or 0.0,
        selection_score=selection_score,
        metrics=metrics,
        identical=identical,
        samples=len(per_sample),
    )


def check_targets(costed: Sequence[Costed], speedups: Sequence[float], steps: int) -> None:
    """Refuse a speed-up no candidate serves, saying which are reachable: the whole range, and for a speed-up
    that falls in a gap between candidates, the nearest ratios on either side."""
    lowest, highest = reachable(costed)
    missing = [t for t in speedups if not any(serves(c.speedup, t) for c in costed)]
    if not missing:
        return
    speeds = sorted({round(c.speedup, 2) for c in costed if c.speedup is not None})
    gaps = []
    for target in missing:
        below = [s for s in speeds if s < target]
        above = [s for s in speeds if s > target]
        if below and above:
            gaps.append(f"{target:g}x falls between {below[-1]:.2f}x and {above[0]:.2f}x")
    shown = ", ".join(f"{t:g}x" for t in missing)
    raise RaluError(
        f"no candidate reaches {shown} (within ± 5 % of its FLOPs): the candidates of this model span "
        f"{lowest:.2f}x to {highest:.2f}x fewer FLOPs than its sampler at {steps} steps"
        + (f", and {'; '.join(gaps)}" if gaps else "")
        + "; ask for speed-ups the candidates reach"
    )


def check_budget(
    pools: dict[float, list[Costed]],
    first: Sequence[SampleKey],
    per_image: float,
    left: float,
    spent_before: float = 0.0,
    kept: Callable[[str, SampleKey], bool] = lambda key, sample: False,
) -> None:
    """Refuse a time budget that cannot finish the first round (on the `first` samples; images an earlier run
    `kept` cost nothing), saying how many candidates would fit. The estimate: a candidate's image costs the
    baseline's over its FLOPs speed-up."""
    need = sum(
        per_image / (c.speedup or 1.0)
        for pool in pools.values()
        for c in pool
        for sample in first
        if not kept(c.candidate.key, sample)
    )
    if need <= left:
        return
    average = len(first) * per_image * sum(1 / (c.speedup or 1.0) for pool in pools.values() for c in pool)
    average /= max(1, sum(len(pool) for pool in pools.values()))
    fitting = int(left / average) // max(1, len(pools)) if average > 0 else 0
    raise RaluError(
        f"--max-minutes: the first round alone needs about {need / 60:.1f} minutes here ({per_image:.2f} s per "
        f"baseline image), {max(0.0, left) / 60:.1f} are left"
        + (f" (earlier runs of this tune spent {spent_before / 60:.1f})" if spent_before > 0 else "")
        + "; give more minutes, or --max-candidates "
        f"{max(1, fitting)} (what fits)" + ("" if fitting >= 1 else ", or fewer speed-ups")
    )


def run_search(
    settings: TuneSettings,
    model: ModelSpace,
    searched: Searched,
    counter: CostCounter,
    scorer: Scorer,
    progress: Progress | None = None,
    max_minutes: float | None = None,
    costed: list[Costed] | None = None,
    workers: Workers | None = None,
) -> TuneResult:
    started = time.monotonic()
    progress = progress or Progress()
    workers = workers or OneProcess()
    notes = list(f"not searched: {line}" for line in searched.left_out)
    if costed is None:
        costed, skipped = count_candidates(model, searched, counter, settings.speedups)
        notes.append(f"{skipped} combinations skipped before counting (their plan alone is too fast or too slow)")
    check_targets(costed, settings.speedups, settings.steps)
    selection, held = split_samples(len(settings.prompts), settings.seeds)
    controls = {t: _best_control(costed, t) for t in settings.speedups}
    pools = {
        t: pick([c for c in costed if serves(c.speedup, t)], t, settings.max_candidates, controls[t])
        for t in settings.speedups
    }
    total = sum(
        alive * used
        for pool in pools.values()
        for alive, used in round_sizes(len(pool), len(selection), settings.first_samples, settings.keep_share)
    )
    total += len(selection) + len(held)  # the baseline's images
    for target in settings.speedups:  # the winner, the control and the best built-in, on every sample
        settled = 1 + (controls[target] is not None) + any(c.candidate.family == BUILTIN for c in pools[target])
        total += settled * (len(selection) + len(held))
    progress.start(total)
    done = [0]

    def advance() -> None:
        done[0] += 1
        progress.advance(done[0])

    scorer.share([*selection, *held], workers)
    baseline_started = time.monotonic()
    made_before = scorer.calls
    for sample in [*selection, *held]:
        if scorer.owns(sample):
            scorer.baseline(sample)
        advance()
    # The budget counts what earlier runs of this tune spent on the images they kept (the slowest process's).
    spent_before = max(workers.exchange(scorer.spent_before))
    deadline = None if max_minutes is None else started + 60.0 * max_minutes - spent_before
    made = scorer.calls - made_before
    timed = [t for t in workers.exchange((time.monotonic() - baseline_started) / made if made else None) if t]
    if deadline is not None and timed:
        first = selection[: settings.first_samples]
        left = deadline - time.monotonic()
        check_budget(pools, first, max(timed), left, spent_before, scorer.kept)

    def prepare(entries: Sequence[Evaluated], samples: Sequence[SampleKey]) -> None:
        scorer.fill([(e.key, e.costed.candidate.recipe, s) for e in entries for s in samples], advance)

    def past(deadline: float | None) -> bool:
        return any(workers.exchange(deadline is not None and time.monotonic() > deadline))

    def score(entry: Evaluated, sample: SampleKey) -> float:
        return scorer.combined_score(entry.key, entry.costed.candidate.recipe, sample)

    evaluated: dict[float, list[Evaluated]] = {}
    targets = []
    for target in settings.speedups:
        entries = [Evaluated(costed=c, target=target) for c in pools[target]]
        evaluated[target] = entries

        def described(entries: Sequence[Evaluated], samples: Sequence[SampleKey], target: float = target) -> None:
            progress.describe(f"{target:g}x: {len(entries)} candidates on {len(samples)} samples")
            prepare(entries, samples)

        winner, note = halving(
            entries, selection, score, settings.first_samples, settings.keep_share, deadline, described, past
        )
        progress.describe(f"{target:g}x: the winner, the control and the held-out samples")
        outcome = _settle(
            winner,
            controls[target],
            _best_builtin(entries),
            selection,
            held,
            scorer,
            score,
            prepare,
            settings.first_samples,
        )
        targets.append(
            attrs.evolve(
                outcome,
                target=target,
                note="; ".join(n for n in (note, outcome.note) if n),
                candidates=len(entries),
                rounds=tuple(sum(1 for e in entries if len(e.rounds) > r) for r in range(len(winner.rounds))),
            )
        )
    progress.close()
    return TuneResult(
        settings=settings,
        costed=costed,
        evaluated=evaluated,
        targets=targets,
        notes=notes,
        selection=selection,
        held=held,
        seconds=time.monotonic() - started,
        images_made=scorer.calls,
    )


def _settle(
    winner: Evaluated,
    control: Costed | None,
    builtin: Evaluated | None,
    selection: Sequence[SampleKey],
    held: Sequence[SampleKey],
    scorer: Scorer,
    score: Callable[[Evaluated, SampleKey], float],
    prepare: Callable[[Sequence[Evaluated], Sequence[SampleKey]], None],
    first: int = 2,
) -> TargetResult:
    """The recommendation: the halving's winner, unless the fewer-steps control scores at least as well over the
    whole selection; then the held-out numbers of it, the control and the best built-in recipe."""
    compared = [winner.costed, *(c for c in (control, builtin.costed if builtin else None) if c is not None)]
    prepare([Evaluated(costed=c, target=0.0) for c in compared], [*selection, *held])

    def full_score(costed: Costed) -> float:
        return statistics.fmean(score(Evaluated(costed=costed, target=0.0), s) for s in selection)

    chosen, chosen_score, notes = winner.costed, full_score(winner.costed), []
    control_score = None
    if control is None:
        notes.append("no fewer-steps control spends at most these FLOPs: none was compared")
    else:
        control_score = full_score(control)
        if control.candidate.key != chosen.candidate.key and control_score >= chosen_score:
            notes.append(
                f"fewer steps ({control.candidate.label}) scored at least as well as the halving's winner "
                f"({chosen.candidate.label}) over the whole selection: tune recommends them"
            )
            chosen, chosen_score = control, control_score
    shown = [held_out_numbers(scorer, chosen, "recommended", held, chosen_score)]
    if control is not None and control.candidate.key != chosen.candidate.key:
        shown.append(held_out_numbers(scorer, control, "fewer-steps control", held, control_score))
        if shown[-1].metrics[SCORE][0] > shown[0].metrics[SCORE][0]:
            notes.append("on the held-out samples the fewer-steps control scored higher than the recommendation")
    if builtin is not None and builtin.key != chosen.candidate.key:
        builtin_score = full_score(builtin.costed)
        shown.append(held_out_numbers(scorer, builtin.costed, "best built-in", held, builtin_score))
    first_score = statistics.fmean(score(Evaluated(costed=chosen, target=0.0), s) for s in selection[:first])
    return TargetResult(
        target=0.0,
        chosen=chosen,
        selection_score=chosen_score,
        held_out=tuple(shown),
        note="; ".join(notes),
        first_score=first_score,
    )


def _best_control(costed: Sequence[Costed], target: float) -> Costed | None:
    """The fewer-steps control with the most steps that still spends no more FLOPs than the speed-up's window
    allows (so fewer steps are always compared, even where no step count falls inside the window)."""
    floor = target * (1 - WINDOW)
    controls = [c for c in costed if c.candidate.family == FEWER_STEPS and (c.speedup or 0) >= floor]
    return min(controls, key=lambda c: (c.speedup or 0, c.candidate.key), default=None)


def _best_builtin(entries: Sequence[Evaluated]) -> Evaluated | None:
    builtins = [e for e in entries if e.costed.candidate.family == BUILTIN and e.rounds]
    return min(builtins, key=lambda e: (-len(e.rounds), -(e.last_score or 0.0), e.key), default=None)
