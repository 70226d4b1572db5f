"""Noise-timestep distribution matching (NTDM) for multi-stage RALU sampling.

RALU ("Upsample What Matters", arXiv 2507.08422) samples a rectified flow in ``K`` stages of
increasing resolution.  Time ``t`` runs from 0 (pure noise) to 1 (data); ``sigma = 1 - t``.
Stage ``k`` covers ``t`` in ``[s_k, e_k]`` with ``n_k`` Euler steps, ``s_1 = 0`` and ``e_K = 1``.

Why a rewind at every transition
    Upsampling a latent at time ``e_k`` breaks the noise statistics the model expects, so after
    stage ``k`` the latent is mixed with fresh noise and the sampler resumes at an *earlier* time
    ``s_{k+1} < e_k``.  With a parameter ``c`` in ``(0, 1/4]``::

        delta_k = (1 - e_k) / sqrt(c)
        s_{k+1} = e_k / (delta_k + e_k)
        a = 1 / (delta_k + e_k) = s_{k+1} / e_k
        b = delta_k / (delta_k + e_k) = 1 - s_{k+1}

    ``a`` scales the upsampled latent and ``b`` the noise it is mixed with; ``c <= 1/4`` keeps the
    noise variance of a 2x2 group of copied tokens non-negative (``a^2 (1-e)^2 4 + b^2 (1-4c) = b^2``).

Why match timestep distributions
    A rewind makes the interval ``[s_{k+1}, e_k]`` be traversed twice.  The paper argues the
    sampler should spend its steps where a single-resolution sampler with base shift ``h0`` would,
    *plus* the re-traversed intervals.  With the shifted density and its CDF::

        f_h(t) = h / (1 + (h-1) t)^2,        F_h(t) = h t / (1 + (h-1) t)
        f_{h,s,e}(t) = f_h(t) / (F_h(e) - F_h(s))   on [s, e], else 0

    the target is::

        P_target(t) = [f_{h0,0,1}(t) + sum_{k<K} (e_k - s_{k+1}) f_{h0,s_{k+1},e_k}(t)]
                      / [1 + sum_{k<K} (e_k - s_{k+1})]

    and the schedule with per-stage shifts ``h_k`` actually samples::

        P(t) = sum_k n_k f_{h_k,s_k,e_k}(t) / sum_k n_k

    ``solve_ntdm`` picks ``(h_1..h_K, c)`` minimising the Jensen-Shannon distance between them.

Discretisation
    ``[0, 1]`` is cut at every stage boundary (``0``, the ``s_k``, the ``e_k``, ``1``) and each of
    the ``2K - 1`` segments is split into ``ceil(grid_size / (2K - 1))`` equal cells (one segment
    of ``grid_size`` cells when ``K = 1``).  Each truncated density contributes the *exact* mass of
    each cell (CDF differences of the clipped edges), i.e. the cell-averaged ``density * dt``; the
    JS distance is then taken between the two normalised mass vectors, as
    ``scipy.spatial.distance.jensenshannon`` with natural log would.  Aligning cells with the
    boundaries matters: on a fixed uniform grid the boundary cell mixes two densities, so the
    objective ripples at the cell scale as ``s_{k+1}`` moves with ``c``, and L-BFGS-B's
    finite-difference gradients then stall short of the optimum.  Everything is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "NTDMSolution",
    "StagePlan",
    "fixed_ntdm",
    "injection_coefficients",
    "rewind_start",
    "schedule_js_distance",
    "shifted_cdf",
    "shifted_pdf",
    "solve_ntdm",
    "stage_sigmas",
    "unrewound_schedule",
]

FloatArray = npt.NDArray[np.float64]

#: Largest admissible ``c``: with 4 copies of a token sharing one noise direction the remaining
#: independent noise variance is ``b^2 (1 - 4c)``, which must be non-negative.
C_MAX = 0.25

_SHIFT_BOUNDS = (0.5, 10.0)
_Q_BOUNDS = (2.0, 100.0)  # q = 1 / sqrt(c); q >= 2  <=>  c <= 1/4
_SHIFT_START = 3.0
_Q_START = 2.0


# ---------------------------------------------------------------------------------------------
# Shifted timestep density
# ---------------------------------------------------------------------------------------------


def shifted_pdf(t: FloatArray, shift: float) -> FloatArray:
    """Density of the shifted timestep ``f_h(t) = h / (1 + (h-1) t)^2`` on ``[0, 1]``.

    It is the law of ``t`` when the *shifted* sigma ``h u / (1 + (h-1) u)`` is taken at uniform
    ``u``; ``h > 1`` concentrates steps near noise (``f_h(0) = h``, ``f_h(1) = 1/h``).
    """
    _check_positive("shift", shift)
    tt = np.asarray(t, dtype=np.float64)
    return np.asarray(shift / (1.0 + (shift - 1.0) * tt) ** 2, dtype=np.float64)


def shifted_cdf(t: FloatArray | float, shift: float) -> FloatArray | float:
    """CDF ``F_h(t) = h t / (1 + (h-1) t)`` of :func:`shifted_pdf` (``F_h(0)=0``, ``F_h(1)=1``)."""
    _check_positive("shift", shift)
    if isinstance(t, (int, float)):
        tf = float(t)
        return shift * tf / (1.0 + (shift - 1.0) * tf)
    tt = np.asarray(t, dtype=np.float64)
    return np.asarray(shift * tt / (1.0 + (shift - 1.0) * tt), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Stage transitions (rewind + noise injection)
# ---------------------------------------------------------------------------------------------


def rewind_start(end: float, c: float) -> float:
    """Start time ``s_{k+1} = e_k / (delta_k + e_k)`` of the next stage, ``delta_k = (1-e_k)/sqrt(c)``.

    Always ``0 < s_{k+1} < e_k``: the transition rewinds towards noise so the injected noise can be
    denoised again at the new resolution.
    """
    _check_transition_end(end)
    _check_c(c)
    delta = (1.0 - end) / math.sqrt(c)
    return end / (delta + end)


FLOAT32_TOLERANCE = 1e-5
"""Relative slack on c = 1/4 for stage ends and starts rounded to float32 (their ulp is about 6e-8)."""


def injection_coefficients(end: float, start: float) -> tuple[float, float, float]:
    """Recover ``(a, b, c)`` from a stage end ``e_k`` and the next start ``s_{k+1}``.

    Inverting :func:`rewind_start`: ``delta = e (1 - s) / s`` so

        a = 1 / (delta + e) = s / e,     b = delta / (delta + e) = 1 - s,
        c = ((1 - e) s / (e (1 - s)))^2.

    The new latent is ``a * upsampled + b * noise``; ``a (1 - e) = sqrt(c) * b`` is the std of the
    noise already present, so ``a^2 (1-e)^2 + b^2 (1 - c) = b^2`` (total noise std ``b = 1 - s``).
    """
    _check_transition_end(end)
    e = float(end)
    s_or_none = _as_real(start)
    if s_or_none is None or not 0.0 < s_or_none < e:
        raise ValueError(
            f"start must satisfy 0 < start < end (a rewind goes back towards noise); got start={start!r}, end={end!r}."
        )
    s = s_or_none
    c = ((1.0 - e) * s / (e * (1.0 - s))) ** 2
    # The sigmas reach a transition through the pipeline's float32 schedule: a solved c = 1/4 comes back up to a
    # few float32 ulps above it, which is rounding, not a rewind too short.
    if not (0.0 < c <= C_MAX * (1.0 + FLOAT32_TOLERANCE)):
        raise ValueError(
            f"end={e!r}, start={s!r} imply c={c!r}, outside (0, 1/4]; the rewind is too short. "
            f"Use start <= {rewind_start(e, C_MAX)!r} (the c=1/4 rewind) for this end."
        )
    c = min(c, C_MAX)
    return s / e, 1.0 - s, c


# ---------------------------------------------------------------------------------------------
# In-stage sigma grid
# ---------------------------------------------------------------------------------------------


def stage_sigmas(start: float, end: float, steps: int, shift: float) -> FloatArray:
    """Descending sigmas (``steps + 1`` points) for one stage on ``t`` in ``[start, end]``.

    The shift map ``sigma = h u / (1 + (h-1) u)`` is inverted at both ends,
    ``u(sigma) = sigma / (h - (h-1) sigma)``, ``u`` is spaced uniformly between them and mapped
    back.  This makes the stage's steps distributed as ``f_{h,start,end}``; for ``[0, 1]`` it is
    exactly the usual static-shift schedule.  The endpoints are set exactly to ``1 - start`` and
    ``1 - end`` (so the final stage ends at exactly 0.0).
    """
    _check_steps_value("steps", steps)
    _check_positive("shift", shift)
    if not (0.0 <= float(start) < float(end) <= 1.0):
        raise ValueError(f"need 0 <= start < end <= 1 (t units); got start={start!r}, end={end!r}.")
    h = float(shift)
    sig_hi = 1.0 - float(start)
    sig_lo = 1.0 - float(end)
    u_hi = sig_hi / (h - (h - 1.0) * sig_hi)
    u_lo = sig_lo / (h - (h - 1.0) * sig_lo)
    u = np.linspace(u_hi, u_lo, int(steps) + 1, dtype=np.float64)
    sig = np.asarray(h * u / (1.0 + (h - 1.0) * u), dtype=np.float64)
    sig[0] = sig_hi
    sig[-1] = sig_lo
    return sig


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StagePlan:
    """One sampling stage: ``t`` in ``[start, end]``, ``steps`` Euler steps, in-stage ``shift``."""

    start: float
    end: float
    steps: int
    shift: float
    sigmas: tuple[float, ...]


@attrs.frozen(kw_only=True)
class NTDMSolution:
    """Per-stage shifts and rewind parameter ``c`` for a ``K``-stage schedule.

    ``starts[0] == 0.0``; ``starts[k+1] = rewind_start(ends[k], c)``.  ``c`` is ``None`` when
    ``K == 1`` (no transition) or when the schedule does not rewind (then ``starts[k+1] ==
    ends[k]``).  ``js_distance`` is the natural-log Jensen-Shannon distance between the target and
    the sampled timestep distributions.
    """

    steps: tuple[int, ...]
    ends: tuple[float, ...]
    base_shift: float
    shifts: tuple[float, ...]
    c: float | None
    starts: tuple[float, ...]
    js_distance: float

    def stages(self) -> tuple[StagePlan, ...]:
        """The concrete per-stage plans, including each stage's sigma grid."""
        return tuple(
            StagePlan(
                start=s,
                end=e,
                steps=n,
                shift=h,
                sigmas=tuple(float(x) for x in stage_sigmas(s, e, n, h)),
            )
            for s, e, n, h in zip(self.starts, self.ends, self.steps, self.shifts, strict=True)
        )

    def starting_at(self, start: float) -> NTDMSolution:
        """The same plan laid over ``t`` in ``[start, 1]`` (image-to-image): every end rescaled into it, each
        stage keeping its steps and shift, each transition rewinding by the same ``c``. Not solved for that
        interval: NT-DM's objective matches the timestep density of a run from pure noise."""
        if not 0.0 <= start < 1.0:
            raise ValueError(f"an image-to-image start must lie in [0, 1) (t units), got {start}")
        ends = (*(start + (1.0 - start) * e for e in self.ends[:-1]), 1.0)
        c = self.c if self.starts[1:] != self.ends[:-1] else None  # None: the transitions do not rewind
        starts = (start, *(e if c is None else rewind_start(e, c) for e in ends[:-1]))
        return attrs.evolve(self, ends=ends, starts=starts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (plain ints/floats/lists/None)."""
        return {
            "steps": [int(n) for n in self.steps],
            "ends": [float(e) for e in self.ends],
            "base_shift": float(self.base_shift),
            "shifts": [float(h) for h in self.shifts],
            "c": None if self.c is None else float(self.c),
            "starts": [float(s) for s in self.starts],
            "sigmas": [list(p.sigmas) for p in self.stages()],
            "js_distance": float(self.js_distance),
        }


# ---------------------------------------------------------------------------------------------
# Objective
# ---------------------------------------------------------------------------------------------


def _cell_masses(edges: FloatArray, shift: float, start: float, end: float) -> FloatArray:
    """Exact mass of ``f_{shift,start,end}`` in each cell delimited by ``edges`` (spanning [0, 1])."""
    h = shift
    clipped = np.clip(edges, start, end)
    cdf = h * clipped / (1.0 + (h - 1.0) * clipped)
    return np.asarray(np.diff(cdf) / (cdf[-1] - cdf[0]), dtype=np.float64)


def _starts_for(ends: Sequence[float], c: float | None) -> tuple[float, ...]:
    if c is None:
        return (0.0,)
    return (0.0, *(rewind_start(e, c) for e in ends[:-1]))


def _js(
    grid_size: int,
    steps: Sequence[int],
    ends: Sequence[float],
    shifts: Sequence[float],
    starts: Sequence[float],
    base_shift: float,
) -> float:
    """JS distance between the target and sampled distributions (inputs assumed valid)."""
    edges = _aligned_edges(grid_size, ends, starts)
    k_stages = len(steps)
    target = _cell_masses(edges, base_shift, 0.0, 1.0)
    total_w = 1.0
    for k in range(k_stages - 1):
        w = ends[k] - starts[k + 1]
        if w <= 0.0:  # no rewind: nothing is visited twice
            continue
        target = target + w * _cell_masses(edges, base_shift, starts[k + 1], ends[k])
        total_w += w
    target = target / total_w
    sampled = np.zeros_like(target)
    for k in range(k_stages):
        sampled += steps[k] * _cell_masses(edges, shifts[k], starts[k], ends[k])
    sampled /= float(sum(steps))
    return _js_distance(target, sampled)


def _check_grid_size(grid_size: int) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2 (e.g. 20_000); got {grid_size!r}.")
    return int(grid_size)


def _aligned_edges(grid_size: int, ends: Sequence[float], starts: Sequence[float]) -> FloatArray:
    """Cell edges on ``[0, 1]`` with every stage boundary ``s_k``, ``e_k`` as an edge.

    The ``2K - 1`` segments between consecutive (sorted) boundaries each get the same number of
    equal cells, ``ceil(grid_size / (2K - 1))``.  No cell straddles a jump of a truncated density,
    and the cell layout moves smoothly with ``c``, so the objective is smooth in ``(h, c)``.
    (On a fixed uniform grid the JS distance has a cell-scale ripple in ``s_{k+1}`` that stalls
    L-BFGS-B's finite-difference gradients at spurious stationary points.)
    """
    knots = np.sort(np.asarray([0.0, *starts[1:], *ends[:-1], 1.0], dtype=np.float64))
    n_seg = knots.size - 1
    per_seg = -(-grid_size // n_seg)
    frac = np.arange(per_seg, dtype=np.float64) / per_seg
    lo = knots[:-1]
    width = knots[1:] - lo
    inner = (lo[:, None] + width[:, None] * frac[None, :]).ravel()
    return np.asarray(np.append(inner, 1.0), dtype=np.float64)


def _js_distance(p: FloatArray, q: FloatArray) -> float:
    """Natural-log Jensen-Shannon distance of two mass vectors (normalised here).

    Same formula as ``scipy.spatial.distance.jensenshannon`` (``sqrt`` of the divergence), but the
    divergence is clamped at 0 so round-off at a perfect match gives 0 rather than NaN.
    """
    from scipy.special import rel_entr  # type: ignore[import-untyped,unused-ignore]

    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)
    div = 0.5 * (float(rel_entr(p, m).sum()) + float(rel_entr(q, m).sum()))
    return math.sqrt(max(div, 0.0))


def schedule_js_distance(
    steps: Sequence[int],
    ends: Sequence[float],
    shifts: Sequence[float],
    c: float | None,
    base_shift: float,
    *,
    grid_size: int = 20_000,
) -> float:
    """Jensen-Shannon distance (natural log) between ``P_target`` and the schedule's ``P``."""
    st, en, h0 = _validate_schedule(steps, ends, base_shift)
    sh = _validate_shifts(shifts, len(st))
    cc = _validate_c_for(c, len(st))
    return _js(_check_grid_size(grid_size), st, en, sh, _starts_for(en, cc), h0)


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------


def solve_ntdm(
    steps: Sequence[int],
    ends: Sequence[float],
    base_shift: float,
    *,
    grid_size: int = 20_000,
) -> NTDMSolution:
    """Solve per-stage shifts (and ``c`` when ``K > 1``) by minimising the JS distance.

    L-BFGS-B over ``(h_1..h_K, q)`` with ``q = 1/sqrt(c)``; bounds ``h in [0.5, 10]`` and
    ``q in [2, 100]`` (so ``c in [1e-4, 1/4]``); start ``h = 3``, ``q = 2``.  The optimum depends
    only on ``(steps, ends, base_shift)``, so it can be solved once and cached.
    """
    st, en, h0 = _validate_schedule(steps, ends, base_shift)
    n_cells = _check_grid_size(grid_size)
    k_stages = len(st)
    multi = k_stages > 1

    def unpack(x: FloatArray) -> tuple[tuple[float, ...], float | None]:
        shifts = tuple(float(v) for v in x[:k_stages])
        c = 1.0 / float(x[k_stages]) ** 2 if multi else None
        return shifts, c

    def objective(x: FloatArray) -> float:
        shifts, c = unpack(x)
        return _js(n_cells, st, en, shifts, _starts_for(en, c), h0)

    x0 = [_SHIFT_START] * k_stages + ([_Q_START] if multi else [])
    bounds = [_SHIFT_BOUNDS] * k_stages + ([_Q_BOUNDS] if multi else [])
    x0_arr = np.asarray(x0, dtype=np.float64)
    from scipy.optimize import minimize  # type: ignore[import-untyped,unused-ignore]  # loaded when solving

    res = minimize(objective, x0_arr, method="L-BFGS-B", bounds=bounds)
    x_best = np.asarray(res.x, dtype=np.float64)
    # L-BFGS-B never returns worse than its start, but guard against a failed line search anyway.
    if not float(res.fun) <= objective(x0_arr):
        x_best = x0_arr
    shifts, c = unpack(x_best)
    starts = _starts_for(en, c)
    return NTDMSolution(
        steps=st,
        ends=en,
        base_shift=h0,
        shifts=shifts,
        c=c,
        starts=starts,
        js_distance=_js(n_cells, st, en, shifts, starts, h0),
    )


def fixed_ntdm(
    steps: Sequence[int],
    ends: Sequence[float],
    base_shift: float,
    shifts: Sequence[float],
    c: float | None,
) -> NTDMSolution:
    """A schedule with user-chosen shifts and ``c`` (for ablations); ``js_distance`` is reported."""
    st, en, h0 = _validate_schedule(steps, ends, base_shift)
    sh = _validate_shifts(shifts, len(st))
    cc = _validate_c_for(c, len(st))
    return _measured(st, en, h0, sh, cc, _starts_for(en, cc))


def unrewound_schedule(
    steps: Sequence[int],
    ends: Sequence[float],
    base_shift: float,
    shifts: Sequence[float] | None = None,
) -> NTDMSolution:
    """Stages that follow one another without rewinding (``s_{k+1} = e_k``), for naive-upsampling
    ablations; each stage's shift defaults to the base shift, i.e. pieces of the base schedule.
    With no rewind nothing is visited twice, so the target is the base density alone."""
    st, en, h0 = _validate_schedule(steps, ends, base_shift)
    sh = _validate_shifts((h0,) * len(st) if shifts is None else shifts, len(st))
    return _measured(st, en, h0, sh, None, (0.0, *en[:-1]))


def _measured(
    steps: tuple[int, ...],
    ends: tuple[float, ...],
    base_shift: float,
    shifts: tuple[float, ...],
    c: float | None,
    starts: tuple[float, ...],
) -> NTDMSolution:
    """A given (not solved) schedule with its JS distance to the target."""
    return NTDMSolution(
        steps=steps,
        ends=ends,
        base_shift=base_shift,
        shifts=shifts,
        c=c,
        starts=starts,
        js_distance=_js(20_000, steps, ends, shifts, starts, base_shift),
    )


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _as_real(x: object) -> float | None:
    """``float(x)`` for a real, finite, non-bool number; ``None`` otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _check_positive(name: str, value: object) -> None:
    v = _as_real(value)
    if v is None or v <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")


def _check_steps_value(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int (number of Euler steps); got {value!r}.")


def _check_c(c: object) -> None:
    v = _as_real(c)
    if v is None or not 0.0 < v <= C_MAX:
        raise ValueError(
            f"c must be in (0, 0.25] (c <= 1/4 keeps the injected noise variance non-negative); got {c!r}."
        )


def _check_transition_end(end: object) -> None:
    v = _as_real(end)
    if v is None or not 0.0 < v < 1.0:
        raise ValueError(
            f"end must be in (0, 1) for a stage transition (the last stage, end=1, has none); got {end!r}."
        )


def _validate_schedule(
    steps: Sequence[int], ends: Sequence[float], base_shift: float
) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    steps_t = tuple(steps)
    ends_t = tuple(ends)
    if len(steps_t) < 1:
        raise ValueError("steps must list at least one stage, e.g. steps=(2, 3, 5).")
    if len(steps_t) != len(ends_t):
        raise ValueError(
            f"steps and ends must have the same length (one entry per stage); "
            f"got steps={steps_t!r} (len {len(steps_t)}), ends={ends_t!r} (len {len(ends_t)})."
        )
    for i, n in enumerate(steps_t):
        _check_steps_value(f"steps[{i}]", n)
    for i, e in enumerate(ends_t):
        v = _as_real(e)
        if v is None or not 0.0 < v <= 1.0:
            raise ValueError(f"ends[{i}] must be in (0, 1] (t units, 1 = data); got {e!r} in ends={ends_t!r}.")
    for i in range(1, len(ends_t)):
        if not float(ends_t[i]) > float(ends_t[i - 1]):
            raise ValueError(
                f"ends must be strictly increasing; ends[{i}]={ends_t[i]!r} <= "
                f"ends[{i - 1}]={ends_t[i - 1]!r} in ends={ends_t!r}."
            )
    if float(ends_t[-1]) != 1.0:
        raise ValueError(f"the last entry of ends must be 1.0 (sampling ends at data); got ends={ends_t!r}.")
    _check_positive("base_shift", base_shift)
    return tuple(int(n) for n in steps_t), tuple(float(e) for e in ends_t), float(base_shift)


def _validate_shifts(shifts: Sequence[float], k_stages: int) -> tuple[float, ...]:
    sh = tuple(shifts)
    if len(sh) != k_stages:
        raise ValueError(f"shifts must have one entry per stage ({k_stages}); got shifts={sh!r} (len {len(sh)}).")
    for i, h in enumerate(sh):
        _check_positive(f"shifts[{i}]", h)
    return tuple(float(h) for h in sh)


def _validate_c_for(c: float | None, k_stages: int) -> float | None:
    if k_stages == 1:
        if c is not None:
            raise ValueError(f"c must be None for a single-stage schedule (no transition); got c={c!r}.")
        return None
    if c is None:
        raise ValueError(f"c is required (in (0, 0.25]) for a {k_stages}-stage schedule; got c=None.")
    _check_c(c)
    return float(c)
