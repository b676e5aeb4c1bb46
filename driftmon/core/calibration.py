"""Thresholds derived from a false-alarm budget.

Every detector gets a target average run length (events between false alarms, ARL) and
this module turns it into a Page-Hinkley threshold or an ADWIN ``delta``.

Page-Hinkley with ``alpha=1`` and a frozen reference is Page's CUSUM. For a continuous
feature its in-control ARL follows Siegmund's approximation::

    ARL(h) ≈ (exp(θ·b) − θ·b − 1) / (θ·|E[Y]|),   b = h + 1.166·sd(Y)

where Y is the per-event increment (standardised value minus the drift ``k``) and θ > 0
solves E[exp(θ·Y)] = 1, from the feature's own warm-up sample (its empirical
distribution, so skewed and clipped features are handled).

A 0/1 feature feeds the CUSUM only two values, and for a rare rate the rise is one big
jump ((1 − p̃)/sd − k ≈ 14 at p̃ = 0.005) whose overshoot of h is nothing like the
1.166·sd of a normal walk: Siegmund's formula over-states such a walk's false-alarm rate
2–3× (``tests/core/test_calibration.py``). So 0/1 thresholds use the exact run length of
the two-valued walk (:func:`two_point_cycle`, a renewal argument on the lattice the walk
lives on); beyond a few jumps' height, where exact cycles get long, Siegmund's formula
with the overshoot found exactly at that height, which matches the exact rate to 1 %.

The reference is *estimated*, so the rate 1/ARL is averaged over the estimation error: a
normal law of the mean error for continuous features and the Beta posterior of the rate
for 0/1 features. Averaging the rate, not the ARL, is what keeps short warm-ups from
inflating false alarms (a lucky and an unlucky reference do not cancel out). ADWIN fires
far less often on rare 0/1 rates than on p = 0.5, where its ``delta`` is calibrated; the
share of the budget it leaves unused there goes to Page-Hinkley.
``benchmarks/calibration.py`` checks the result on simulated null streams.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

OVERSHOOT = 1.166  # Siegmund's correction for a normal random walk, in units of sd(Y)

# Fixed standard-normal nodes (mid-quantiles) for averaging over the estimation error.
_N_NODES = 24


def _normal_quantiles(n: int) -> FloatArray:
    from statistics import NormalDist

    nd = NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / n) for i in range(n)], dtype=np.float64)


_NORMAL_NODES = _normal_quantiles(_N_NODES)


def cgf_root(y: FloatArray, weights: FloatArray | None = None) -> FloatArray:
    """θ > 0 with E[exp(θY)] = 1, row-wise for a 2-D array of samples ``y``.

    Rows whose increments are never positive cannot alarm: θ = +inf. Rows with
    E[Y] >= 0 have no positive root; their value is unused (see :func:`cusum_rate`).
    """
    y2 = np.atleast_2d(y)
    w = np.full(y2.shape[1], 1.0 / y2.shape[1]) if weights is None else np.atleast_2d(weights)
    can_alarm = (y2 > 0).any(axis=1)
    has_root = can_alarm & ((w * y2).sum(axis=1) < 0)
    # The normal approximation 2|E[Y]|/Var(Y), doubled, is usually right of the root.
    mean = (w * y2).sum(axis=1)
    var = (w * (y2 - mean[:, None]) ** 2).sum(axis=1)
    theta = np.clip(4.0 * np.abs(mean) / np.maximum(var, 1e-12), 1e-6, 1e6)

    def log_mgf(t: FloatArray) -> tuple[FloatArray, FloatArray]:
        """log E[exp(tY)] and its derivative, computed stably (log-sum-exp)."""
        a = t[:, None] * y2
        top = a.max(axis=1, keepdims=True)
        e = w * np.exp(a - top)
        total = e.sum(axis=1)
        return np.log(total) + top[:, 0], (e * y2).sum(axis=1) / total

    # Start to the right of the root (log-mgf > 0 there), then Newton steps on the
    # log-mgf: convex and nearly linear for large θ, so from the right they converge
    # fast and monotonically even when one rare value dominates (0/1 features).
    for _ in range(60):
        grow = has_root & (log_mgf(theta)[0] <= 0.0)
        if not grow.any():
            break
        theta = np.where(grow, theta * 2.0, theta)
    for _ in range(100):
        g, dg = log_mgf(theta)
        step = np.where(has_root & (dg > 0), g / np.where(dg > 0, dg, 1.0), 0.0)
        theta = theta - step
        if np.all(np.abs(step) <= 1e-7 * np.maximum(theta, 1e-12)):
            break
    return np.where(can_alarm, theta, np.inf)


def cusum_rate(
    theta: FloatArray, mean_y: FloatArray, sd_y: FloatArray, h: FloatArray
) -> FloatArray:
    """False alarms per event of a one-sided CUSUM, for each row and each threshold in ``h``.

    Siegmund's approximation for a walk that drifts down; a walk that drifts upwards (a
    true rate the estimate under-states) crosses ``h`` about every (h + overshoot) / E[Y]
    events. Rows are walks, columns thresholds.
    """
    theta, mean_y, sd_y = theta[:, None], mean_y[:, None], sd_y[:, None]
    b_raw = h[None, :] + OVERSHOOT * sd_y
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        b = theta * b_raw
        arl = (np.expm1(np.minimum(b, 700.0)) - b) / (theta * np.abs(mean_y))
        quiet = np.where(np.isfinite(theta), 1.0 / np.maximum(arl, 1.0), 0.0)
        drifting = np.minimum(1.0, np.maximum(mean_y, 0.0) / b_raw)
    return np.where(mean_y < 0, quiet, drifting)


_H_GRID: FloatArray = np.geomspace(0.25, 2e5, 200)


def _solve_threshold(
    theta: FloatArray,
    mean_y: FloatArray,
    sd_y: FloatArray,
    target_arl: float,
    node_weights: FloatArray | None = None,
) -> float:
    """Smallest h whose two-sided rate, averaged over the estimation-error nodes (the
    first half of the rows is the upper side, the second the lower), is 1/target_arl."""

    def rate_at(h: FloatArray) -> FloatArray:
        rates = cusum_rate(theta, mean_y, sd_y, h)
        half = rates.shape[0] // 2
        both = rates[:half] + rates[half:]
        return both.mean(axis=0) if node_weights is None else node_weights @ both

    return _grid_solve(rate_at, 1.0 / target_arl)


# Every 8th point of _H_GRID and its last: where _grid_solve looks first.
_COARSE: npt.NDArray[np.intp] = np.unique(np.r_[np.arange(0, len(_H_GRID), 8), len(_H_GRID) - 1])


def _grid_solve(rate_at: Callable[[FloatArray], FloatArray], target: float) -> float:
    """``_first_h_below(rate_at(_H_GRID), target)`` for a rate that does not grow with h.

    Finds the bracket on every 8th grid point, then evaluates only the points inside it:
    ~35 evaluations instead of 200. A threshold is derived at every reference merge of
    every continuous stream, and on the full grid this was ~15 % of replay time.
    """
    coarse = rate_at(_H_GRID[_COARSE])
    below = np.nonzero(coarse <= target)[0]
    if len(below) == 0:
        return float(_H_GRID[-1])
    j = int(below[0])
    if j == 0:
        return float(_H_GRID[0])
    lo, hi = int(_COARSE[j - 1]), int(_COARSE[j])
    fine = rate_at(_H_GRID[lo : hi + 1])
    i = int(np.nonzero(fine <= target)[0][0])  # >= 1: the point at lo is above target
    return _interpolate_h(lo + i, float(fine[i - 1]), float(fine[i]), target)


def _interpolate_h(i: int, rate_before: float, rate_at_i: float, target: float) -> float:
    """Log-linear interpolation of the rate between grid points i - 1 and i."""
    r0, r1 = math.log(max(rate_before, 1e-300)), math.log(max(rate_at_i, 1e-300))
    t = 1.0 if r0 == r1 else (r0 - math.log(target)) / (r0 - r1)
    return float(_H_GRID[i - 1] + t * (_H_GRID[i] - _H_GRID[i - 1]))


def _first_h_below(mean_rate: FloatArray, target: float) -> float:
    """Where a false-alarm rate tabulated on ``_H_GRID`` falls to ``target`` (log-linear)."""
    below = np.nonzero(mean_rate <= target)[0]
    if len(below) == 0:
        return float(_H_GRID[-1])
    i = int(below[0])
    if i == 0:
        return float(_H_GRID[0])
    return _interpolate_h(i, float(mean_rate[i - 1]), float(mean_rate[i]), target)


# Mean errors (in reference standard deviations) at which θ is tabulated: wide enough for
# the smallest warm-up allowed (50 events: nodes reach ±2.04/√50 ≈ ±0.29).
_EPS_GRID: FloatArray = np.linspace(-0.32, 0.32, 17)


@dataclass(frozen=True, slots=True)
class ShapeTable:
    """θ of both CUSUM sides over a grid of mean errors, for one feature's warm-up shape.

    Built once per warm-up; thresholds for every later reference size interpolate it.
    """

    theta_up: FloatArray
    theta_down: FloatArray
    mean_z: float
    sd_z: float


def shape_table(z_quantiles: FloatArray, k: float) -> ShapeTable:
    """Tabulate θ for the standardised warm-up values summarised by ``z_quantiles``."""
    up = z_quantiles[None, :] + _EPS_GRID[:, None] - k
    down = -z_quantiles[None, :] - _EPS_GRID[:, None] - k
    theta = cgf_root(np.vstack([up, down]))
    n = len(_EPS_GRID)
    return ShapeTable(theta[:n], theta[n:], float(z_quantiles.mean()), float(z_quantiles.std()))


def ph_threshold_continuous(table: ShapeTable, k: float, n_ref: int, target_arl: float) -> float:
    """Two-sided CUSUM threshold for a standardised continuous feature.

    The true mean of the stream in reference units is uncertain by N(0, 1/n_ref),
    averaged over fixed nodes.
    """
    eps = np.clip(_NORMAL_NODES / math.sqrt(n_ref), _EPS_GRID[0], _EPS_GRID[-1])
    theta = np.concatenate(
        [np.interp(eps, _EPS_GRID, table.theta_up), np.interp(eps, _EPS_GRID, table.theta_down)]
    )
    mean_y = np.concatenate([table.mean_z + eps - k, -table.mean_z - eps - k])
    sd_y = np.full(len(mean_y), table.sd_z)
    return _solve_threshold(theta, mean_y, sd_y, target_arl)


def _beta_posterior_nodes(a: float, b: float, n: int = 64) -> tuple[FloatArray, FloatArray]:
    """Quadrature nodes and weights for Beta(a, b), on a logit grid around its mode.

    Deterministic (no sampling noise): the averaged rate is dominated by the upper tail,
    where a few random draws would make thresholds jump between calls.
    """
    centre = math.log(a / b)
    spread = 8.0 * math.sqrt(1.0 / a + 1.0 / b)
    u = np.linspace(centre - spread, centre + spread, n)
    p = 1.0 / (1.0 + np.exp(-u))
    log_w = a * np.log(p) + b * np.log1p(-p)  # density in logit space
    w = np.exp(log_w - log_w.max())
    return p, w / w.sum()


def ph_threshold_binary(
    successes: int,
    n_ref: int,
    k: float,
    target_arl: float,
    *,
    adwin_share: bool = False,
    rare_share: bool = False,
) -> float:
    """Two-sided CUSUM threshold for a 0/1 feature standardised by its estimated rate.

    The estimate is p̃ = (s + 0.5) / (n + 1); the true rate is uncertain with the
    Beta(s + 0.5, n − s + 0.5) posterior, integrated on a fixed logit grid, and the run
    lengths are exact for the two-valued increments (:func:`two_point_cycle`). With
    ``adwin_share`` the stream's ADWIN runs with ``target_arl`` too, and the part of its
    share that it leaves unused at this rate (:func:`adwin_binary_rate_ratio`) goes to
    Page-Hinkley. With ``rare_share``, when the rate is rare (:func:`is_rare`) the
    likelihood-ratio CUSUM of :func:`rare_threshold_binary` takes ``RARE_SHARE`` of
    Page-Hinkley's budget. The problem is symmetric in s ↔ n − s, and the threshold varies
    smoothly with s, so it is solved exactly on a geometric grid of s (cached) and
    interpolated in between: thousands of keys then share a few dozen solutions.
    """
    share = 1.0 - RARE_SHARE if rare_share and is_rare(successes, n_ref) else 1.0
    return _on_success_grid(
        lambda s: _ph_threshold_binary_exact(s, n_ref, k, target_arl, adwin_share, share),
        successes,
        n_ref,
    )


def _on_success_grid(exact: Callable[[int], float], successes: int, n_ref: int) -> float:
    """``exact`` at min(s, n − s), interpolated between the points of the success grid."""
    s = min(successes, n_ref - successes)
    grid = _success_grid(n_ref // 2)
    i = bisect_left(grid, s)
    if grid[i] == s:
        return exact(s)
    lo, hi = grid[i - 1], grid[i]
    h_lo, h_hi = exact(lo), exact(hi)
    return h_lo + (s - lo) / (hi - lo) * (h_hi - h_lo)


# -- rare 0/1 rates: a likelihood-ratio CUSUM against an upper bound of the rate ----------
#
# Standardised by a rate estimated near 0, one occurrence is a jump of ~1/sd (35σ at 0 in
# 600) while k is a quarter σ: the budget, averaged over rates the posterior still allows
# (1 % after 0 in 600), then needs dozens of jumps. Page's CUSUM of the Bernoulli
# log-likelihood ratio of RARE_ALTERNATIVE against an upper bound of the reference rate
# instead adds log(p₁/p₀) per occurrence (4.8–6.2 at 0 in 600–2 400) and removes
# log((1 − p₀)/(1 − p₁)) ≈ 0.22 per other value: a new behaviour is caught in a few
# occurrences, at the same false-alarm budget (its threshold comes from the same exact
# run lengths, averaged over the same posterior).
RARE_RATE_MAX = 0.02
"""A 0/1 stream is *rare* when the upper bound of its minority rate is at most this."""
RARE_ALTERNATIVE = 0.2
"""The rate the likelihood-ratio CUSUM is tuned to: a new behaviour in one answer of five.
It detects any rate well above the bound, more slowly the closer it is to the bound (0.1
would catch 0 → 5 % about three times faster, 0 → 35 % one occurrence later)."""
RARE_SHARE = 0.5
"""The part of a rare stream's Page-Hinkley budget its likelihood-ratio CUSUM gets."""


def rare_rate_bound(successes: int, n_ref: int) -> float:
    """Upper bound of the minority value's rate: (s + 1)/(n + 1), not the estimate s/n.

    At 0 in 600 it is 0.0017 (the Jeffreys posterior puts 84 % of its mass below it); a
    rate known to be small, not a rate known to be 0.
    """
    return (min(successes, n_ref - successes) + 1.0) / (n_ref + 1.0)


def is_rare(successes: int, n_ref: int) -> bool:
    """Whether a 0/1 reference gets the likelihood-ratio CUSUM (bound ≤ RARE_RATE_MAX)."""
    return rare_rate_bound(successes, n_ref) <= RARE_RATE_MAX


def rare_steps(successes: int, n_ref: int) -> tuple[float, float]:
    """(rise per minority value, fall per other value) of the likelihood-ratio CUSUM."""
    p0, p1 = rare_rate_bound(successes, n_ref), RARE_ALTERNATIVE
    return math.log(p1 / p0), math.log((1.0 - p0) / (1.0 - p1))


def rare_threshold_binary(
    successes: int, n_ref: int, target_arl: float, *, adwin_share: bool = False
) -> float:
    """Threshold of the one-sided likelihood-ratio CUSUM on the minority value of a rare
    0/1 feature (:func:`rare_steps`), with ``RARE_SHARE`` of Page-Hinkley's budget
    (``adwin_share`` as for :func:`ph_threshold_binary`); infinite when not rare.

    Exact run lengths of the two-valued walk, the rate averaged over the Beta posterior
    of the true rate, as for :func:`ph_threshold_binary` (solved on the same grid of s).
    """
    if not is_rare(successes, n_ref):
        return math.inf
    return _on_success_grid(
        lambda s: _rare_threshold_exact(s, n_ref, target_arl, adwin_share), successes, n_ref
    )


# -- the tails of a continuous feature: likelihood-ratio CUSUMs of tail exceedances ---------
#
# A canary or a rollout moves only a share of the answers: 20 % of them from a model whose
# answers pile up in the top tenth of the old one's lengths moves the mean normal score by
# ~0.1 sd, which Page-Hinkley's k = 0.25 cannot see, but it nearly doubles how often the
# scores pass the reference's 90th percentile. Each tail's exceedances are a 0/1 stream
# whose reference rate is counted like a 0/1 feature's (~10 %, known to ±1.7 % after 300
# events); Page's CUSUM of the Bernoulli log-likelihood ratio of TAIL_RATIO times that
# rate adds log 2 per exceedance and removes ~0.12 per other value. Its threshold comes
# from the same exact run lengths, averaged over the same Beta posterior, with TAIL_SHARE
# of the continuous Page-Hinkley's budget (half per tail).
TAIL_Z = 1.2815515655446004
"""The upper tail: normal scores above the standard normal's 90th percentile (the lower
tail: below its negation)."""
TAIL_RATIO = 2.0
"""The exceedance rate the tail CUSUMs are tuned to, as a multiple of the reference's."""
TAIL_RATE_MIN = 0.04
TAIL_RATE_MAX = 0.2
"""A tail is watched only while its reference rate is within these (a feature with few
distinct values can put much more or much less of its mass past the cut: near 0 the
threshold is useless and slow to solve, the walk's fall per value being tiny)."""
TAIL_SHARE = 0.25
"""The part of a continuous stream's Page-Hinkley budget its two tail CUSUMs get."""
TAIL_MIN_REF = 1200
"""Tails are watched from this reference size on: on 300 events the rate is too uncertain
(its threshold would be ~390, for nothing) and Page-Hinkley keeps the whole budget."""


def tail_rate(successes: int, n_ref: int) -> float:
    """The reference's exceedance rate of one tail, (s + ½)/(n + 1)."""
    return (successes + 0.5) / (n_ref + 1.0)


def tail_steps(successes: int, n_ref: int) -> tuple[float, float]:
    """(rise per exceedance, fall per other value) of one tail's likelihood-ratio CUSUM."""
    p0 = tail_rate(successes, n_ref)
    p1 = TAIL_RATIO * p0
    return math.log(p1 / p0), math.log((1.0 - p0) / (1.0 - p1))


def tail_threshold(successes: int, n_ref: int, target_arl: float) -> float:
    """Threshold of one tail's likelihood-ratio CUSUM (:func:`tail_steps`), with half of
    ``TAIL_SHARE`` of the stream's Page-Hinkley budget; infinite when the tail's rate is
    outside ``TAIL_RATE_MIN``…``TAIL_RATE_MAX`` or the reference is smaller than
    ``TAIL_MIN_REF``. Exact run lengths averaged over the Beta posterior of the true rate,
    as for :func:`rare_threshold_binary`, solved on the same grid of s and interpolated."""
    rate = tail_rate(successes, n_ref)
    if n_ref < TAIL_MIN_REF or not TAIL_RATE_MIN <= rate <= TAIL_RATE_MAX:
        return math.inf
    return _on_success_grid(lambda s: _tail_threshold_exact(s, n_ref, target_arl), successes, n_ref)


@lru_cache(maxsize=8192)
def _tail_threshold_exact(successes: int, n_ref: int, target_arl: float) -> float:
    share = TAIL_SHARE / 2.0
    steps = tail_steps(successes, n_ref)
    rates = _BinaryRates(
        successes, n_ref, 0.0, 1e-3 * share / target_arl, likelihood_ratio=True, steps=steps
    )
    return _solve_binary(rates, target_arl, False, share)


@lru_cache(maxsize=64)
def _success_grid(top: int) -> list[int]:
    """0, 1, 2, … then steps of ~15 % up to ``top`` (always included)."""
    grid, s = [], 0
    while s < top:
        grid.append(s)
        s = max(s + 1, int(s * 1.15))
    grid.append(top)
    return grid


class _GeometricScan:
    """Along each row, in place: y[i] += q·y[i−1] for i = 1, 2, … (q per row).

    As y[i] = q^i·Σ_{j≤i} y[j]·q^−j: three vector passes with powers computed once per
    cycle, while q^−i stays finite; otherwise a log-depth prefix scan.
    """

    def __init__(self, q: FloatArray, max_cols: int) -> None:
        self.q = q
        log_q = np.log(q)
        self.direct = max_cols * float(-log_q.min()) <= 600.0
        if self.direct:
            i = np.arange(max_cols, dtype=np.float64)
            self.up = np.exp(log_q * i[None, :])
            self.down = np.exp(-log_q * i[None, :])

    def __call__(self, y: FloatArray) -> None:
        cols = y.shape[1]
        if self.direct:
            y *= self.down[:, :cols]
            np.cumsum(y, axis=1, out=y)
            y *= self.up[:, :cols]
            return
        f, step = self.q, 1
        while step < cols:
            y[:, step:] += f * y[:, :-step]
            f = f * f
            step *= 2


def two_point_cycle(
    up: float,
    down: float,
    p_up: FloatArray,
    h: float,
    weights: FloatArray | None = None,
    tol: float = 1e-15,
    max_rows: int = 200_000,
) -> tuple[FloatArray, FloatArray]:
    """One renewal cycle of the CUSUM S ← max(0, S + Y), Y = +up (probability p_up) or −down.

    A cycle starts at S = 0 and ends when S is back at 0 or exceeds ``h`` (an alarm).
    Returns, for each entry of ``p_up``, the alarm probability of a cycle and its expected
    number of events; cycles are independent, so the zero-state ARL is their ratio.

    Exact, with no discretisation: after r steps of the larger size and i of the smaller
    one the walk is at a point of a lattice strip, and the probability of each point is
    a path count times powers of the two probabilities. Row r (r larger steps) follows
    from row r − 1 in a few vector operations: the larger step moves mass across rows,
    the smaller steps along a row are a first-order recurrence (a prefix scan). With
    ``tol`` > 0 the rows stop once the mass still in the strip could change the
    ``weights``-averaged alarm rate by at most ``tol`` (alarms per event).

    >>> a, l = two_point_cycle(1.0, 1.0, np.array([0.5]), 1.5)  # ±1 steps, alarm at 2
    >>> float(l[0] / a[0])  # steps of a fair ±1 walk reflected at 0 until it reaches 2
    6.0
    """
    p_up = np.asarray(p_up, dtype=np.float64)
    n = p_up.shape[0]
    w = np.full(n, 1.0 / n) if weights is None else weights
    up_big = up >= down
    big, small = (up, down) if up_big else (down, up)
    pi = p_up if up_big else 1.0 - p_up  # probability of the larger step
    pi_c = pi[:, None]
    stay = 1.0 - pi_c  # probability of the smaller step
    tiny = 1e-9 * (big + small)
    sign = 1.0 if up_big else -1.0

    def pos(r: int, i: int) -> float:
        return sign * (r * big - i * small)

    def bounds(r: int) -> tuple[int, int]:
        """Cells of row r strictly inside the strip (0, h]."""
        if up_big:  # the position falls along the row
            lo = max(0, math.ceil((r * big - h) / small))
            while pos(r, lo) > h:
                lo += 1
            while lo > 0 and pos(r, lo - 1) <= h:
                lo -= 1
            hi = math.ceil(r * big / small)
            while hi >= 0 and pos(r, hi) <= tiny:
                hi -= 1
            while pos(r, hi + 1) > tiny:
                hi += 1
        else:  # the position rises along the row
            lo = max(0, math.floor(r * big / small))
            while pos(r, lo) <= tiny:
                lo += 1
            while lo > 0 and pos(r, lo - 1) > tiny:
                lo -= 1
            hi = math.floor((h + r * big) / small)
            while hi >= 0 and pos(r, hi) > h:
                hi -= 1
            while pos(r, hi + 1) <= h:
                hi += 1
        return lo, hi

    scan = _GeometricScan(stay, math.floor(h / small) + 3)
    alarm = np.zeros(n)
    # Row 0: the start at S = 0, then (if the smaller step rises) its run of smaller steps.
    hi0 = 0 if up_big else max(0, bounds(0)[1])
    row = stay ** np.arange(hi0 + 1, dtype=np.float64)[None, :]
    lo = 0
    length = row.sum(axis=1)
    if not up_big:
        alarm += stay[:, 0] * row[:, -1]
    for r in range(1, max_rows + 1):
        prev_lo, prev = lo, row
        prev_hi = prev_lo + prev.shape[1] - 1
        lo, hi = bounds(r)
        if up_big and lo > prev_lo:  # the larger step from these cells crosses h
            alarm += pi * prev[:, : min(lo, prev_hi + 1) - prev_lo].sum(axis=1)
        f_lo, f_hi = max(prev_lo, lo), min(prev_hi, hi)
        if f_hi < f_lo:
            break
        lo = f_lo  # cells of row r left of the entry points stay empty
        row = np.zeros((n, hi - lo + 1))
        row[:, : f_hi - lo + 1] = pi_c * prev[:, f_lo - prev_lo : f_hi - prev_lo + 1]
        scan(row)
        mass = row.sum(axis=1)
        length += mass
        if not up_big:  # the smaller step from the top cell crosses h
            alarm += stay[:, 0] * row[:, -1]
        if float(w @ (pi * mass / length)) <= tol:
            break
    return alarm, length


def two_point_root(up: float, down: float, p_up: FloatArray) -> FloatArray:
    """The non-zero θ with E[exp(θY)] = 1 for Y = +up (p_up) or −down.

    Positive when the walk drifts down, negative when it drifts up, 0 without drift.
    """
    p_up = np.asarray(p_up, dtype=np.float64)
    mean = p_up * up - (1.0 - p_up) * down
    falls = mean < 0
    y = np.array([up, -down])
    weights = np.stack([p_up, 1.0 - p_up], axis=1)
    # For a rising walk, θ' of −Y is positive and θ = −θ'.
    values = np.where(falls[:, None], y[None, :], -y[None, :])
    theta = cgf_root(values, weights)
    return np.where(mean == 0, 0.0, np.where(falls, theta, -theta))


def _siegmund_arl(
    theta: FloatArray, mean: FloatArray, var: FloatArray, b: FloatArray
) -> FloatArray:
    """Siegmund's ARL (e^{θb} − θb − 1) / (−θ·E[Y]) for either sign of the drift."""
    x = theta * b
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        arl = (np.expm1(np.minimum(x, 700.0)) - x) / (-theta * mean)
        small = np.abs(x) < 1e-4  # series: → b²/Var(Y) without drift
        near = np.where(mean != 0, theta * b * b / (-2.0 * mean) * (1.0 + x / 3.0), b * b / var)
    return np.where(small, near, arl)


def _siegmund_offset(
    arl: FloatArray, theta: FloatArray, mean: FloatArray, var: FloatArray
) -> FloatArray:
    """The b at which :func:`_siegmund_arl` equals ``arl`` (Newton, from the right)."""
    finite = np.isfinite(arl)
    arl = np.where(finite, arl, 1.0)
    rises = theta < 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        target = arl * np.abs(theta * mean)  # e^x − x − 1 = target, x = θb
        # |x| with φ(|x|) = target, φ(y) = e^y − y − 1 (falling) or e^−y + y − 1 (rising);
        # both convex and increasing, so Newton from a start right of the root converges.
        y = np.where(
            rises, target + 1.0, np.minimum(np.sqrt(2.0 * target), np.log(2.0 * target + 2.0))
        )
        for _ in range(200):
            e = np.where(rises, np.expm1(-y), np.expm1(np.minimum(y, 700.0)))
            phi = np.where(rises, e + y, e - y)
            dphi = np.where(rises, -e, e)
            step = np.where(dphi > 0, (phi - target) / np.where(dphi > 0, dphi, 1.0), 0.0)
            y = y - step
            if np.all(np.abs(step) <= 1e-12 * y):
                break
        b = y / np.abs(theta)
    near = np.abs(theta) * np.sqrt(arl * var) < 1e-4
    return np.where(finite, np.where(near, np.sqrt(arl * var), b), np.inf)


# Exact cycles are computed up to a threshold of this many of the larger steps. Beyond,
# the run length grows like Siegmund's formula with the overshoot found exactly at this
# threshold: the overshoot is what the normal approximation gets wrong for a two-valued
# walk, and its exact value settles within a few jumps (at 2–3 times this threshold the
# extrapolated rate is within 1 % of the exact one; tested), while the cost of an exact
# cycle grows with h².
EXACT_STEPS = 6


class _BinaryRates:
    """False-alarm rate of both CUSUM sides of one reference, averaged over the posterior.

    With ``likelihood_ratio`` the one side of the likelihood-ratio CUSUM on the minority
    value instead (``steps``, by default :func:`rare_steps`; ``successes`` ≤ n_ref / 2,
    ``k`` unused).
    """

    def __init__(
        self,
        successes: int,
        n_ref: int,
        k: float,
        tol: float,
        *,
        likelihood_ratio: bool = False,
        steps: tuple[float, float] | None = None,
    ) -> None:
        p_ref = (successes + 0.5) / (n_ref + 1.0)
        sd_ref = math.sqrt(p_ref * (1.0 - p_ref))
        hi_z = (1.0 - p_ref) / sd_ref
        lo_z = -p_ref / sd_ref
        p_true, w_post = _beta_posterior_nodes(successes + 0.5, n_ref - successes + 0.5)
        self.p_true, self.w_post = p_true, w_post
        # A node adds at most its weight to the rate (≤ 1 alarm per event): drop the
        # negligible ones, at most ``tol`` in all.
        keep = w_post > tol / len(w_post)
        p, w = p_true[keep], w_post[keep]
        self.weights, self.tol = w, tol
        self.sides: list[tuple[float, float, FloatArray, FloatArray, FloatArray, FloatArray]]
        self.sides = []
        # Upper side: a 1 adds hi_z − k, a 0 adds lo_z − k. Lower side (the negated values):
        # a 0 adds −lo_z − k, which is only positive (able to alarm) for p̃ > k²/(1 + k²).
        walks: tuple[tuple[float, float, FloatArray], ...]
        walks = ((hi_z - k, k - lo_z, p), (-lo_z - k, hi_z + k, 1.0 - p))
        if likelihood_ratio:
            walks = ((*(steps or rare_steps(successes, n_ref)), p),)
        for up, down, p_up in walks:
            if up > 0.0:
                mean = p_up * up - (1.0 - p_up) * down
                var = p_up * (1.0 - p_up) * (up + down) ** 2
                self.sides.append((up, down, p_up, two_point_root(up, down, p_up), mean, var))
        self._beyond: list[FloatArray | None] = [None] * len(self.sides)

    def cap(self, side: int) -> float:
        up, down = self.sides[side][:2]
        return EXACT_STEPS * max(up, down)

    def _exact(self, side: int, h: float) -> FloatArray:
        """Per node, the exact rate 1/ARL at threshold h."""
        up, down, p_up, theta, _, _ = self.sides[side]
        # Lundberg: a walk drifting down ever exceeds h with probability ≤ exp(−θh), so
        # a cycle alarms no more often. Far below the tolerance, skip the exact cycle
        # (it is long when the rising step is tiny, e.g. the lower side for p̃ near 0.06).
        with np.errstate(over="ignore"):
            bound = np.where(theta > 0, np.exp(-theta * h), 1.0)
        if float(self.weights @ bound) <= self.tol:
            return np.zeros(len(p_up))
        alarm, length = two_point_cycle(up, down, p_up, h, self.weights, self.tol)
        return alarm / length

    def offsets(self, side: int, h: float) -> FloatArray:
        """Per node, the b − h at which Siegmund's formula gives the exact ARL at h."""
        _, _, _, theta, mean, var = self.sides[side]
        rate = self._exact(side, h)
        with np.errstate(divide="ignore"):
            arl = np.where(rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.inf)
        return _siegmund_offset(arl, theta, mean, var) - h

    def side_rate(self, side: int, h: float) -> FloatArray:
        """Per node: exact up to the side's cap, extrapolated beyond it."""
        if h <= self.cap(side):
            return self._exact(side, h)
        _, _, _, theta, mean, var = self.sides[side]
        offset = self._beyond[side]
        if offset is None:
            offset = self._beyond[side] = self.offsets(side, self.cap(side))
        return _fitted_rates(theta, mean, var, offset, np.array([h]))[:, 0]

    def rate(self, h: float) -> float:
        return float(sum(self.weights @ self.side_rate(i, h) for i in range(len(self.sides))))

    def guess(self, target: float) -> float:
        """Siegmund's threshold, then again with the overshoot found exactly there."""
        theta = np.concatenate([s[3] for s in self.sides])
        mean = np.concatenate([s[4] for s in self.sides])
        var = np.concatenate([s[5] for s in self.sides])
        weights = np.concatenate([self.weights] * len(self.sides))
        h = _solve_fitted(theta, mean, var, OVERSHOOT * np.sqrt(var), weights, target)
        offsets = [self.offsets(i, min(h, self.cap(i))) for i in range(len(self.sides))]
        return _solve_fitted(theta, mean, var, np.concatenate(offsets), weights, target)


@lru_cache(maxsize=8192)
def _ph_threshold_binary_exact(
    successes: int,
    n_ref: int,
    k: float,
    target_arl: float,
    adwin_share: bool = False,
    share: float = 1.0,
) -> float:
    """Smallest h whose exact posterior-averaged rate is at most ``share`` of the budget.

    The rate falls in steps as h passes the points the walk can reach, so it is bracketed
    from a fitted guess and bisected to 0.2 % of h.
    """
    rates = _BinaryRates(successes, n_ref, k, 1e-3 * share / target_arl)
    return _solve_binary(rates, target_arl, adwin_share, share)


@lru_cache(maxsize=8192)
def _rare_threshold_exact(
    successes: int, n_ref: int, target_arl: float, adwin_share: bool = False
) -> float:
    """:func:`_ph_threshold_binary_exact` for the likelihood-ratio CUSUM."""
    rates = _BinaryRates(
        successes, n_ref, 0.0, 1e-3 * RARE_SHARE / target_arl, likelihood_ratio=True
    )
    return _solve_binary(rates, target_arl, adwin_share, RARE_SHARE)


def _solve_binary(rates: _BinaryRates, target_arl: float, adwin_share: bool, share: float) -> float:
    """The threshold meeting ``share`` of Page-Hinkley's budget: 1/target_arl, plus with
    ``adwin_share`` the part of ADWIN's that it leaves unused at this rate."""
    budget = 1.0 / target_arl
    if adwin_share:
        spent = float(rates.w_post @ adwin_binary_rate_ratio(rates.p_true))
        budget += (1.0 - spent) / target_arl
    target = share * budget
    rates.tol = 1e-3 * target
    return _bracket_and_bisect(rates.rate, rates.guess(target), target)


def _bracket_and_bisect(rate: Callable[[float], float], guess: float, target: float) -> float:
    """Smallest h (to 0.2 %) with rate(h) ≤ target, for a non-increasing step function.

    Brackets outwards from the guess in growing steps, then cuts the bracket where the
    log-rate would reach the target on a line (kept off its ends, so a flat step cannot
    stall it).
    """
    h_min, h_max = float(_H_GRID[0]), float(_H_GRID[-1])
    guess = min(max(guess, h_min), h_max)
    log_t = math.log(target)

    def f(h: float) -> float:
        return math.log(max(rate(h), 1e-300)) - log_t

    f_guess = f(guess)
    factor = 1.02
    if f_guess > 0:  # too loud: search upwards
        lo, f_lo = guess, f_guess
        while True:
            if lo >= h_max:
                return h_max
            hi = min(lo * factor, h_max)
            f_hi = f(hi)
            if f_hi <= 0:
                break
            lo, f_lo, factor = hi, f_hi, factor * factor
    else:
        hi, f_hi = guess, f_guess
        while True:
            if hi <= h_min:
                return h_min
            lo = max(hi / factor, h_min)
            f_lo = f(lo)
            if f_lo > 0:
                break
            hi, f_hi, factor = lo, f_lo, factor * factor
    while hi - lo > 2e-3 * hi:
        width = hi - lo
        t = f_lo / (f_lo - f_hi) if f_lo > f_hi else 0.5
        mid = lo + min(max(t, 0.1), 0.9) * width
        f_mid = f(mid)
        if f_mid > 0:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    return hi


def _fitted_rates(
    theta: FloatArray, mean: FloatArray, var: FloatArray, offset: FloatArray, h: FloatArray
) -> FloatArray:
    """Rates per row and h from Siegmund's formula with b = h + offset (inf: no alarm)."""
    b = h[None, :] + offset[:, None]
    arl = _siegmund_arl(theta[:, None], mean[:, None], var[:, None], b)
    return np.where(np.isfinite(offset)[:, None], 1.0 / np.maximum(arl, 1.0), 0.0)


def _solve_fitted(
    theta: FloatArray,
    mean: FloatArray,
    var: FloatArray,
    offset: FloatArray,
    weights: FloatArray,
    target: float,
) -> float:
    """Smallest h whose weighted rate, Siegmund's with b = h + offset per row, is target."""
    return _grid_solve(lambda h: weights @ _fitted_rates(theta, mean, var, offset, h), target)


# ADWIN's delta bounds a union of tests, not a rate. Its null alarm rate per event, measured
# here with clock=4 on 4-20 M-event null streams (the run is reproduced by
# ``benchmarks/calibration.py --detectors adwin``): uniform input stands for the normal
# scores driftmon feeds it for continuous features, Bernoulli(0.5) for 0/1 features (the
# loudest rate: p = 0.05 measured like uniform, p = 0.01 at half). Between table points
# the rate is interpolated log-log; below the smallest delta it is taken as proportional
# to delta, which over-states the rate there (the measured slope is steeper), so ADWIN
# ends up quieter than its share of the budget, never louder.
_ADWIN_RATE: dict[str, tuple[tuple[float, float], ...]] = {
    "continuous": (
        (0.004, 1.5e-7),
        (0.01, 7.0e-7),
        (0.02, 1.5e-6),
        (0.05, 4.25e-6),
        (0.1, 1.27e-5),
        (0.2, 3.0e-5),
        (0.5, 1.24e-4),
    ),
    "binary": (
        (0.004, 5.0e-7),
        (0.01, 1.5e-6),
        (0.02, 2.25e-6),
        (0.05, 1.15e-5),
        (0.2, 8.2e-5),
        (0.5, 3.0e-4),
    ),
}


def adwin_delta(target_arl: float, kind: str) -> float:
    """ADWIN ``delta`` giving about ``target_arl`` null events per false alarm."""
    table = _ADWIN_RATE[kind]
    target = 1.0 / target_arl
    d0, r0 = table[0]
    if target <= r0:
        return d0 * target / r0
    for (d1, r1), (d2, r2) in pairwise(table):
        if target <= r2:
            t = math.log(target / r1) / math.log(r2 / r1)
            return math.exp(math.log(d1) + t * math.log(d2 / d1))
    return table[-1][0]


# ADWIN's null alarm rate on 0/1 input of rate p, as a fraction of its rate at p = 0.5 (the
# "binary" table above), measured with clock=4 on 2·10⁷-event null streams per rate and
# delta (``benchmarks/calibration.py --adwin-rates``). A rare event gives ADWIN's window
# little to cut at, so on rare rates it spends only a small part of its share of the
# budget. The fractions tend to rise a little as delta falls (delta 0.5 → 0.05: +10–25 %,
# +100–200 % at p ≤ 0.002 from 3–13 alarms), so the table is the largest fraction measured
# at delta 0.5, 0.2 or 0.05, rounded up: it over-states what ADWIN spends, and
# Page-Hinkley, which gets the rest, stays within the key's budget. Were ADWIN to spend
# its whole share on a rare rate at the far smaller deltas of production budgets, the
# feature would be at most 1.5× louder than budgeted.
_ADWIN_BINARY_FRACTION: tuple[tuple[float, float], ...] = (
    (0.0005, 0.014),
    (0.002, 0.058),
    (0.005, 0.072),
    (0.01, 0.13),
    (0.02, 0.27),
    (0.05, 0.44),
    (0.1, 0.65),
    (0.2, 0.92),
    (0.5, 1.0),
)


def adwin_binary_rate_ratio(p: FloatArray) -> FloatArray:
    """ADWIN's null alarm rate on 0/1 input of rate ``p``, relative to p = 0.5 (≤ 1).

    Log-log interpolation of the measured table; below its smallest rate the fraction is
    taken as proportional to p (the measured slope between 0.0005 and 0.002 is ~1).
    """
    q = np.minimum(np.asarray(p, dtype=np.float64), 1.0 - np.asarray(p, dtype=np.float64))
    ps = np.log([t[0] for t in _ADWIN_BINARY_FRACTION])
    fs = np.log([t[1] for t in _ADWIN_BINARY_FRACTION])
    with np.errstate(divide="ignore"):
        lq = np.log(q)
    inside = np.exp(np.interp(lq, ps, fs))
    p0, f0 = _ADWIN_BINARY_FRACTION[0]
    return np.where(q < p0, f0 * q / p0, inside)
