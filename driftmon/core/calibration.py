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
from collections.abc import Callable
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

    Rows whose increments are never positive cannot alarm: θ = +inf.
    """
    y2 = np.atleast_2d(y)
    w = np.full(y2.shape[1], 1.0 / y2.shape[1]) if weights is None else np.atleast_2d(weights)
    hi = np.full(y2.shape[0], 1.0)
    can_alarm = (y2 > 0).any(axis=1)
    # Grow the bracket until E[exp(θY)] > 1 (it exceeds 1 for large θ when max(Y) > 0).
    for _ in range(60):
        f = (w * np.exp(np.minimum(hi[:, None] * y2, 700.0))).sum(axis=1)
        grow = can_alarm & (f <= 1.0)
        if not grow.any():
            break
        hi = np.where(grow, hi * 2.0, hi)
    lo = np.zeros_like(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        f = (w * np.exp(np.minimum(mid[:, None] * y2, 700.0))).sum(axis=1)
        above = f > 1.0
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return np.where(can_alarm, 0.5 * (lo + hi), np.inf)


def cusum_rate(theta: FloatArray, mean_y: FloatArray, sd_y: FloatArray, h: float) -> FloatArray:
    """False alarms per event of a one-sided CUSUM with threshold ``h`` (Siegmund).

    A walk that drifts upwards (a true rate the estimate under-states) crosses ``h`` about
    every (h + overshoot) / E[Y] events.
    """
    b_raw = h + OVERSHOOT * sd_y
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        b = theta * b_raw
        arl = (np.expm1(np.minimum(b, 700.0)) - b) / (theta * np.abs(mean_y))
        quiet = np.where(np.isfinite(theta), 1.0 / np.maximum(arl, 1.0), 0.0)
        drifting = np.minimum(1.0, np.maximum(mean_y, 0.0) / b_raw)
    return np.where(mean_y < 0, quiet, drifting)


def _solve_threshold(f: Callable[[float], float], target_arl: float) -> float:
    """Smallest h whose mean rate is at most 1/target_arl (rate falls with h)."""
    target = 1.0 / target_arl
    lo, hi = 0.0, 1.0
    while f(hi) > target:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            return hi
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def ph_threshold_continuous(
    z_quantiles: FloatArray, k: float, n_ref: int, target_arl: float
) -> float:
    """Two-sided CUSUM threshold for a standardised continuous feature.

    ``z_quantiles`` summarise the warm-up's standardised values; the true mean of the
    stream in reference units is uncertain by N(0, 1/n_ref), averaged over fixed nodes.
    """
    eps = _NORMAL_NODES / math.sqrt(n_ref)
    up = z_quantiles[None, :] + eps[:, None] - k
    down = -z_quantiles[None, :] - eps[:, None] - k
    sides = np.vstack([up, down])
    theta = cgf_root(sides)
    mean_y = sides.mean(axis=1)
    sd_y = sides.std(axis=1)

    def rate(h: float) -> float:
        r = cusum_rate(theta, mean_y, sd_y, h)
        return float(r.reshape(2, -1).sum(axis=0).mean())

    return _solve_threshold(rate, target_arl)


@lru_cache(maxsize=4096)
def ph_threshold_binary(successes: int, n_ref: int, k: float, target_arl: float) -> float:
    """Two-sided CUSUM threshold for a 0/1 feature standardised by its estimated rate.

    The estimate is p̃ = (s + 0.5) / (n + 1); the true rate is uncertain with the
    Beta(s + 0.5, n − s + 0.5) posterior, averaged over fixed quantile nodes.
    """
    p_ref = (successes + 0.5) / (n_ref + 1.0)
    sd_ref = math.sqrt(p_ref * (1.0 - p_ref))
    hi_z = (1.0 - p_ref) / sd_ref
    lo_z = -p_ref / sd_ref
    rng = np.random.default_rng(12345)
    p_true = np.sort(rng.beta(successes + 0.5, n_ref - successes + 0.5, size=96))
    values = np.array([[hi_z - k, lo_z - k], [-hi_z - k, -lo_z - k]])  # up, down
    weights = np.stack([p_true, 1.0 - p_true], axis=1)  # (96, 2)
    thetas, means, sds = [], [], []
    for side in values:
        y = np.broadcast_to(side, weights.shape)
        thetas.append(cgf_root(y, weights))
        m = (weights * y).sum(axis=1)
        means.append(m)
        sds.append(np.sqrt((weights * (y - m[:, None]) ** 2).sum(axis=1)))
    theta = np.concatenate(thetas)
    mean_y = np.concatenate(means)
    sd_y = np.concatenate(sds)

    def rate(h: float) -> float:
        r = cusum_rate(theta, mean_y, sd_y, h)
        return float(r.reshape(2, -1).sum(axis=0).mean())

    return _solve_threshold(rate, target_arl)


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
