"""Tests for the NTDM math in ``ralu_core.sampling.ntdm`` (pure numpy/scipy, fast)."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from scipy.integrate import cumulative_trapezoid, quad  # type: ignore[import-untyped,unused-ignore]
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped,unused-ignore]

from ralu_core.sampling import ntdm
from ralu_core.sampling.ntdm import (
    NTDMSolution,
    StagePlan,
    fixed_ntdm,
    injection_coefficients,
    rewind_start,
    schedule_js_distance,
    shifted_cdf,
    shifted_pdf,
    solve_ntdm,
    stage_sigmas,
)

SHIFTS = [0.5, 1.0, 1.7, 3.0, 6.0, 10.0]

PAPER_CONFIGS = [
    ((2, 3, 5), (0.2, 0.3, 1.0)),
    ((4, 5, 6), (0.3, 0.45, 1.0)),
    ((5, 6, 9), (0.2, 0.3, 1.0)),
]


# ------------------------------------------------------------------------------------------
# density
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS)
def test_pdf_integrates_to_one(shift: float) -> None:
    total, _ = quad(lambda t: float(shifted_pdf(np.asarray(t), shift)), 0.0, 1.0)
    assert total == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("shift", SHIFTS)
def test_cdf_matches_cumulative_integral_of_pdf(shift: float) -> None:
    t = np.linspace(0.0, 1.0, 20_001)
    integral = cumulative_trapezoid(shifted_pdf(t, shift), t, initial=0.0)
    cdf = shifted_cdf(t, shift)
    assert isinstance(cdf, np.ndarray)
    np.testing.assert_allclose(cdf, integral, atol=1e-6)
    assert shifted_cdf(0.0, shift) == 0.0
    assert shifted_cdf(1.0, shift) == pytest.approx(1.0, abs=1e-15)


def test_shift_one_is_uniform() -> None:
    t = np.linspace(0.0, 1.0, 101)
    np.testing.assert_array_equal(shifted_pdf(t, 1.0), np.ones_like(t))
    np.testing.assert_array_equal(shifted_cdf(t, 1.0), t)


def test_shift_above_one_favours_noise() -> None:
    # h > 1 puts more steps near t = 0 (noise): f_h(0) = h, f_h(1) = 1/h.
    pdf = shifted_pdf(np.array([0.0, 1.0]), 3.0)
    np.testing.assert_allclose(pdf, [3.0, 1.0 / 3.0])


# ------------------------------------------------------------------------------------------
# stage sigmas
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "steps", "shift"),
    [(0.0, 0.2, 2, 7.5), (0.0317, 0.3, 3, 2.7), (0.0533, 1.0, 5, 2.1), (0.1, 0.9, 1, 0.6)],
)
def test_stage_sigmas_shape_endpoints_monotone(start: float, end: float, steps: int, shift: float) -> None:
    sig = stage_sigmas(start, end, steps, shift)
    assert sig.dtype == np.float64
    assert sig.shape == (steps + 1,)
    assert sig[0] == 1.0 - start
    assert sig[-1] == 1.0 - end
    assert np.all(np.diff(sig) < 0.0)


def test_stage_sigmas_final_stage_ends_exactly_at_zero() -> None:
    sig = stage_sigmas(0.0712345, 1.0, 9, 2.3)
    assert sig[-1] == 0.0
    assert sig[0] == 1.0 - 0.0712345


def test_stage_sigmas_shift_one_is_linspace() -> None:
    sig = stage_sigmas(0.25, 0.75, 4, 1.0)
    np.testing.assert_allclose(sig, np.linspace(0.75, 0.25, 5), rtol=0, atol=1e-15)


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.5])
@pytest.mark.parametrize("steps", [1, 10, 28])
def test_single_stage_matches_static_shift_formula(shift: float, steps: int) -> None:
    base = np.linspace(1.0, 0.0, steps + 1)
    expected = shift * base / (1.0 + (shift - 1.0) * base)
    np.testing.assert_allclose(stage_sigmas(0.0, 1.0, steps, shift), expected, rtol=0, atol=1e-14)


def test_stage_sigmas_follow_truncated_density() -> None:
    # Uniform u <=> t = 1 - sigma is distributed as f_{h,s,e}: the truncated CDF is linear in index.
    s, e, n, h = 0.05, 0.3, 8, 4.0
    t = 1.0 - stage_sigmas(s, e, n, h)
    f_s, f_e = shifted_cdf(s, h), shifted_cdf(e, h)
    assert isinstance(f_s, float) and isinstance(f_e, float)
    frac = (np.asarray(shifted_cdf(t, h)) - f_s) / (f_e - f_s)
    np.testing.assert_allclose(frac, np.linspace(0.0, 1.0, n + 1), atol=1e-12)


# ------------------------------------------------------------------------------------------
# transitions / noise injection
# ------------------------------------------------------------------------------------------

TRANSITIONS = [(0.2, 0.25), (0.3, 0.1), (0.45, 0.01), (0.9, 1e-4), (0.05, 0.2)]


@pytest.mark.parametrize(("end", "c"), TRANSITIONS)
def test_rewind_round_trip(end: float, c: float) -> None:
    s = rewind_start(end, c)
    assert 0.0 < s < end
    # direct formula from the paper
    delta = (1.0 - end) / math.sqrt(c)
    assert s == pytest.approx(end / (delta + end), rel=1e-15)
    a, b, c_back = injection_coefficients(end, s)
    assert c_back == pytest.approx(c, rel=1e-10)
    assert a == pytest.approx(1.0 / (delta + end), rel=1e-12)
    assert b == pytest.approx(delta / (delta + end), rel=1e-12)
    assert s == pytest.approx(a * end, rel=1e-12)
    assert b == pytest.approx(1.0 - s, rel=1e-12)


@pytest.mark.parametrize(("end", "c"), TRANSITIONS)
def test_injection_variance_identities(end: float, c: float) -> None:
    a, b, c_back = injection_coefficients(end, rewind_start(end, c))
    # Non-upsampled token: residual noise a(1-e) plus fresh noise with variance b^2 (1-c).
    assert a**2 * (1.0 - end) ** 2 + b**2 * (1.0 - c_back) == pytest.approx(b**2, rel=1e-12)
    # 4 copies sharing one noise direction: needs 1 - 4c >= 0, i.e. c <= 1/4.
    assert 1.0 - 4.0 * c_back >= -1e-12
    assert a**2 * (1.0 - end) ** 2 * 4.0 + b**2 * (1.0 - 4.0 * c_back) == pytest.approx(b**2, rel=1e-12)


def test_rewind_is_monotone_in_c() -> None:
    # Smaller c rewinds further toward noise.
    starts = [rewind_start(0.3, c) for c in (0.25, 0.1, 0.01, 1e-4)]
    assert all(x > y for x, y in itertools.pairwise(starts))


def test_injection_coefficients_rejects_short_rewind() -> None:
    s_quarter = rewind_start(0.3, 0.25)
    with pytest.raises(ValueError, match=r"c="):
        injection_coefficients(0.3, s_quarter + 0.01)
    with pytest.raises(ValueError, match="start"):
        injection_coefficients(0.3, 0.35)
    with pytest.raises(ValueError, match="start"):
        injection_coefficients(0.3, 0.0)
    with pytest.raises(ValueError, match="end"):
        injection_coefficients(1.0, 0.1)


@pytest.mark.parametrize("c", [0.0, -0.1, 0.26, 1.0, float("nan")])
def test_rewind_start_rejects_bad_c(c: float) -> None:
    with pytest.raises(ValueError, match="c must be in"):
        rewind_start(0.3, c)


# ------------------------------------------------------------------------------------------
# objective
# ------------------------------------------------------------------------------------------


def test_js_helper_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(500)
    q = rng.random(500)
    q[:10] = 0.0
    assert ntdm._js_distance(p, q) == pytest.approx(float(jensenshannon(p, q)), rel=1e-12)
    assert ntdm._js_distance(p, p.copy()) == 0.0


def test_single_stage_js_is_zero_at_base_shift_and_positive_elsewhere() -> None:
    assert schedule_js_distance((10,), (1.0,), (3.0,), None, 3.0) == pytest.approx(0.0, abs=1e-7)
    assert schedule_js_distance((10,), (1.0,), (1.0,), None, 3.0) > 0.05


def test_js_matches_midpoint_discretisation() -> None:
    # Independent check of the objective: midpoint density samples on a fine uniform grid.
    steps, ends, shifts, c, h0 = (2, 3, 5), (0.2, 0.3, 1.0), (7.0, 2.5, 2.0), 0.02, 3.0
    starts = [0.0, rewind_start(0.2, c), rewind_start(0.3, c)]
    t = (np.arange(400_000) + 0.5) / 400_000

    def trunc(h: float, s: float, e: float) -> np.ndarray:
        fs, fe = shifted_cdf(s, h), shifted_cdf(e, h)
        assert isinstance(fs, float) and isinstance(fe, float)
        return np.where((t >= s) & (t <= e), shifted_pdf(t, h), 0.0) / (fe - fs)

    target = trunc(h0, 0.0, 1.0)
    total = 1.0
    for k in range(2):
        w = ends[k] - starts[k + 1]
        target = target + w * trunc(h0, starts[k + 1], ends[k])
        total += w
    target = target / total
    sampled = sum(n * trunc(h, s, e) for n, h, s, e in zip(steps, shifts, starts, ends, strict=True))
    expected = float(jensenshannon(target, np.asarray(sampled) / sum(steps)))
    got = schedule_js_distance(steps, ends, shifts, c, h0)
    assert got == pytest.approx(expected, rel=2e-3)


# ------------------------------------------------------------------------------------------
# solver
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def solved() -> dict[tuple[int, ...], NTDMSolution]:
    return {steps: solve_ntdm(steps, ends, 3.0) for steps, ends in PAPER_CONFIGS}


def test_solver_is_deterministic(solved: dict[tuple[int, ...], NTDMSolution]) -> None:
    again = solve_ntdm((2, 3, 5), (0.2, 0.3, 1.0), 3.0)
    assert again == solved[(2, 3, 5)]
    assert again.to_dict() == solved[(2, 3, 5)].to_dict()


@pytest.mark.parametrize(("steps", "ends"), PAPER_CONFIGS)
def test_solver_paper_configs(
    steps: tuple[int, ...], ends: tuple[float, ...], solved: dict[tuple[int, ...], NTDMSolution]
) -> None:
    sol = solved[steps]
    print(f"\nNTDM {steps} {ends}: shifts={sol.shifts} c={sol.c} starts={sol.starts} JSD={sol.js_distance}")
    assert sol.steps == steps and sol.ends == ends and sol.base_shift == 3.0
    assert sol.c is not None and 0.0 < sol.c <= 0.25
    assert all(0.5 <= h <= 10.0 for h in sol.shifts)
    assert sol.starts[0] == 0.0
    assert all(a < b for a, b in zip(sol.starts, sol.starts[1:], strict=False))
    assert all(s_next < e for s_next, e in zip(sol.starts[1:], ends[:-1], strict=True))
    assert sol.js_distance < 0.1
    # better than the uniform-shift schedule and than the optimiser's start point
    k = len(steps)
    assert sol.js_distance < schedule_js_distance(steps, ends, (1.0,) * k, sol.c, 3.0)
    assert sol.js_distance < schedule_js_distance(steps, ends, (1.0,) * k, 0.25, 3.0)
    assert sol.js_distance < schedule_js_distance(steps, ends, (3.0,) * k, 0.25, 3.0)
    # reported distance is the objective at the returned parameters
    assert sol.js_distance == schedule_js_distance(steps, ends, sol.shifts, sol.c, 3.0)


def test_solver_is_locally_optimal_in_c(solved: dict[tuple[int, ...], NTDMSolution]) -> None:
    sol = solved[(2, 3, 5)]
    assert sol.c is not None
    q = 1.0 / math.sqrt(sol.c)
    for dq in (-0.5, 0.5):
        nearby = schedule_js_distance(sol.steps, sol.ends, sol.shifts, 1.0 / (q + dq) ** 2, 3.0)
        assert sol.js_distance < nearby


def test_single_stage_solver() -> None:
    sol = solve_ntdm((10,), (1.0,), 5.0)
    assert sol.c is None
    assert sol.starts == (0.0,)
    assert sol.shifts[0] == pytest.approx(5.0, rel=1e-6)
    assert sol.js_distance < 1e-6


def test_stages_and_to_dict(solved: dict[tuple[int, ...], NTDMSolution]) -> None:
    sol = solved[(2, 3, 5)]
    plans = sol.stages()
    assert len(plans) == 3
    assert all(isinstance(p, StagePlan) for p in plans)
    for p, s, e, n, h in zip(plans, sol.starts, sol.ends, sol.steps, sol.shifts, strict=True):
        assert (p.start, p.end, p.steps, p.shift) == (s, e, n, h)
        assert len(p.sigmas) == n + 1
        assert p.sigmas[0] == 1.0 - s and p.sigmas[-1] == 1.0 - e
    assert plans[-1].sigmas[-1] == 0.0
    d = sol.to_dict()
    for key in ("steps", "ends", "base_shift", "shifts", "c", "starts", "sigmas", "js_distance"):
        assert key in d
    assert json.loads(json.dumps(d)) == d
    assert d["sigmas"] == [list(p.sigmas) for p in plans]


def test_fixed_ntdm_uses_given_parameters() -> None:
    sol = fixed_ntdm((2, 3, 5), (0.2, 0.3, 1.0), 3.0, (4.0, 3.0, 2.0), 0.05)
    assert sol.shifts == (4.0, 3.0, 2.0) and sol.c == 0.05
    assert sol.starts == (0.0, rewind_start(0.2, 0.05), rewind_start(0.3, 0.05))
    expected = schedule_js_distance((2, 3, 5), (0.2, 0.3, 1.0), (4.0, 3.0, 2.0), 0.05, 3.0)
    assert sol.js_distance == expected
    single = fixed_ntdm((8,), (1.0,), 3.0, (2.0,), None)
    assert single.c is None and single.starts == (0.0,)


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {"steps": (2, 3, 5), "ends": (0.2, 0.3, 1.0), "base_shift": 3.0}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"steps": ()}, "steps"),
        ({"steps": (2, 3), "ends": (0.2, 0.3, 1.0)}, "steps"),
        ({"steps": (2, 0, 5)}, "steps"),
        ({"steps": (2, 3.0, 5)}, "steps"),
        ({"steps": (2, True, 5)}, "steps"),
        ({"ends": (0.3, 0.2, 1.0)}, "ends"),
        ({"ends": (0.2, 0.2, 1.0)}, "ends"),
        ({"ends": (0.0, 0.3, 1.0)}, "ends"),
        ({"ends": (0.2, 0.3, 0.9)}, "ends"),
        ({"ends": (0.2, 0.3, 1.2)}, "ends"),
        ({"base_shift": 0.0}, "base_shift"),
        ({"base_shift": -1.0}, "base_shift"),
        ({"base_shift": float("inf")}, "base_shift"),
    ],
)
def test_schedule_validation(override: dict[str, Any], field: str) -> None:
    kwargs: dict[str, Any] = {**GOOD, **override}
    for fn in (solve_ntdm, lambda **kw: fixed_ntdm(**kw, shifts=(3.0, 3.0, 3.0), c=0.1)):
        with pytest.raises(ValueError, match=field):
            fn(**kwargs)


@pytest.mark.parametrize(
    ("shifts", "c", "field"),
    [
        ((3.0, 3.0), 0.1, "shifts"),
        ((3.0, 0.0, 3.0), 0.1, r"shifts\[1\]"),
        ((3.0, -2.0, 3.0), 0.1, r"shifts\[1\]"),
        ((3.0, 3.0, 3.0), None, "c"),
        ((3.0, 3.0, 3.0), 0.0, "c"),
        ((3.0, 3.0, 3.0), 0.3, "c"),
    ],
)
def test_shift_and_c_validation(shifts: tuple[float, ...], c: float | None, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        fixed_ntdm((2, 3, 5), (0.2, 0.3, 1.0), 3.0, shifts, c)
    with pytest.raises(ValueError, match=field):
        schedule_js_distance((2, 3, 5), (0.2, 0.3, 1.0), shifts, c, 3.0)


def test_error_messages_mention_offending_value() -> None:
    with pytest.raises(ValueError, match=r"0\.45"):
        solve_ntdm((2, 3, 5), (0.45, 0.3, 1.0), 3.0)
    with pytest.raises(ValueError, match="-7"):
        solve_ntdm((2, -7, 5), (0.2, 0.3, 1.0), 3.0)
    with pytest.raises(ValueError, match=r"0\.3"):
        fixed_ntdm((2, 3, 5), (0.2, 0.3, 1.0), 3.0, (3.0, 3.0, 3.0), 0.3)
    with pytest.raises(ValueError, match="c must be None"):
        fixed_ntdm((8,), (1.0,), 3.0, (2.0,), 0.1)
    with pytest.raises(ValueError, match="grid_size"):
        solve_ntdm((8,), (1.0,), 3.0, grid_size=1)


@pytest.mark.parametrize(
    ("args", "field"),
    [((0.0, 1.0, 0, 3.0), "steps"), ((0.0, 1.0, 4, 0.0), "shift"), ((0.5, 0.5, 4, 3.0), "start")],
)
def test_stage_sigmas_validation(args: tuple[float, float, int, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        stage_sigmas(*args)


def test_a_quarter_rewind_survives_the_float32_schedule() -> None:
    """A plan solved at c = 1/4 reaches the transition through float32 sigmas, a few ulps off: still accepted,
    and c is held at 1/4 (ralu tune found this on a solved 3-stage plan: end 0.45 gave c = 0.25000008)."""
    end = 0.45
    start = ntdm.rewind_start(end, ntdm.C_MAX)
    rounded_end, rounded_start = float(np.float32(end)), float(np.float32(start))
    assert ntdm.injection_coefficients(rounded_end, rounded_start)[2] == ntdm.C_MAX
    with pytest.raises(ValueError, match="the rewind is too short"):
        ntdm.injection_coefficients(end, start * 1.001)
