"""Thresholds derived from a false-alarm budget.

Every detector gets a target average run length (events between false alarms, ARL) and
this module turns it into a Page-Hinkley threshold or an ADWIN ``delta``.

Page-Hinkley with ``alpha=1`` and a frozen reference is Page's CUSUM. Its in-control ARL
follows Siegmund's approximation::

    ARL(h) ≈ (exp(θ·b) − θ·b − 1) / (θ·|E[Y]|),   b = h + 1.166·sd(Y)

where Y is the per-event increment (standardised value minus the drift ``k``) and θ > 0
solves E[exp(θ·Y)] = 1. θ comes from the feature's own warm-up sample (its empirical
distribution, so skewed and clipped features are handled), or for 0/1 features from the
Bernoulli law. The reference is *estimated*, so the rate 1/ARL is averaged over the
estimation error: a normal law of the mean error for continuous features and the Beta
posterior of the rate for 0/1 features. Averaging the rate, not the ARL, is what keeps
short warm-ups from inflating false alarms (a lucky and an unlucky reference do not
cancel out). ``benchmarks/calibration.py`` checks the result on simulated null streams.
"""

from __future__ import annotations

import math
from bisect import bisect_left
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
    rates = cusum_rate(theta, mean_y, sd_y, _H_GRID)
    half = rates.shape[0] // 2
    both = rates[:half] + rates[half:]
    mean_rate = both.mean(axis=0) if node_weights is None else node_weights @ both
    target = 1.0 / target_arl
    below = np.nonzero(mean_rate <= target)[0]
    if len(below) == 0:
        return float(_H_GRID[-1])
    i = int(below[0])
    if i == 0:
        return float(_H_GRID[0])
    r0, r1 = math.log(max(mean_rate[i - 1], 1e-300)), math.log(max(mean_rate[i], 1e-300))
    t = 1.0 if r0 == r1 else (r0 - math.log(target)) / (r0 - r1)
    return float(_H_GRID[i - 1] + t * (_H_GRID[i] - _H_GRID[i - 1]))


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


def ph_threshold_binary(successes: int, n_ref: int, k: float, target_arl: float) -> float:
    """Two-sided CUSUM threshold for a 0/1 feature standardised by its estimated rate.

    The estimate is p̃ = (s + 0.5) / (n + 1); the true rate is uncertain with the
    Beta(s + 0.5, n − s + 0.5) posterior, integrated on a fixed logit grid. The problem
    is symmetric in s ↔ n − s, and the threshold varies smoothly with s, so it is solved
    exactly on a geometric grid of s (cached) and interpolated in between: thousands of
    keys then share a few dozen solutions.
    """
    s = min(successes, n_ref - successes)
    grid = _success_grid(n_ref // 2)
    i = bisect_left(grid, s)
    if grid[i] == s:
        return _ph_threshold_binary_exact(s, n_ref, k, target_arl)
    lo, hi = grid[i - 1], grid[i]
    h_lo = _ph_threshold_binary_exact(lo, n_ref, k, target_arl)
    h_hi = _ph_threshold_binary_exact(hi, n_ref, k, target_arl)
    return h_lo + (s - lo) / (hi - lo) * (h_hi - h_lo)


@lru_cache(maxsize=64)
def _success_grid(top: int) -> list[int]:
    """0, 1, 2, … then steps of ~15 % up to ``top`` (always included)."""
    grid, s = [], 0
    while s < top:
        grid.append(s)
        s = max(s + 1, int(s * 1.15))
    grid.append(top)
    return grid


@lru_cache(maxsize=8192)
def _ph_threshold_binary_exact(successes: int, n_ref: int, k: float, target_arl: float) -> float:
    p_ref = (successes + 0.5) / (n_ref + 1.0)
    sd_ref = math.sqrt(p_ref * (1.0 - p_ref))
    hi_z = (1.0 - p_ref) / sd_ref
    lo_z = -p_ref / sd_ref
    p_true, w_post = _beta_posterior_nodes(successes + 0.5, n_ref - successes + 0.5)
    values = np.array([[hi_z - k, lo_z - k], [-hi_z - k, -lo_z - k]])  # up, down
    weights = np.stack([p_true, 1.0 - p_true], axis=1)
    thetas, means, sds = [], [], []
    for side in values:
        y = np.broadcast_to(side, weights.shape)
        thetas.append(cgf_root(y, weights))
        m = (weights * y).sum(axis=1)
        means.append(m)
        sds.append(np.sqrt((weights * (y - m[:, None]) ** 2).sum(axis=1)))
    return _solve_threshold(
        np.concatenate(thetas),
        np.concatenate(means),
        np.concatenate(sds),
        target_arl,
        node_weights=w_post,
    )


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
