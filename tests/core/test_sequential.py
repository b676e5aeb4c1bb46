"""Confidence sequences: coverage at every time, not only at one sample size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftmon.core.sequential import (
    asymptotic_margin,
    beta_binomial_cs,
    optimal_rho2,
    rho2_for,
)


def test_asymptotic_sequence_covers_the_mean_at_every_time() -> None:
    """Gaussian streams read after every value from the 30th: the share of runs whose
    interval *ever* misses the true mean stays within α (plus sampling error)."""
    rng = np.random.default_rng(7)
    runs, horizon, alpha = 600, 1500, 0.05
    x = rng.normal(3.0, 2.0, size=(runs, horizon))
    n = np.arange(1, horizon + 1, dtype=np.float64)
    total = np.cumsum(x, axis=1)
    squares = np.cumsum(x * x, axis=1)
    mean = total / n
    var = (squares - n * mean * mean) / np.maximum(n - 1, 1)
    missed = np.zeros(runs, dtype=bool)
    for t in range(29, horizon):
        margin = asymptotic_margin(np.full(runs, n[t]), var[:, t], alpha, 500.0)
        missed |= np.abs(mean[:, t] - 3.0) > margin
    se = math.sqrt(alpha * (1 - alpha) / runs)
    assert missed.mean() <= alpha + 3 * se


def test_peeking_at_a_fixed_sample_interval_does_not_cover() -> None:
    """The reason for sequences: a 95 % fixed-n interval re-read after every value misses
    far more often than 5 % (the same streams as above)."""
    rng = np.random.default_rng(7)
    runs, horizon = 600, 1500
    x = rng.normal(3.0, 2.0, size=(runs, horizon))
    n = np.arange(1, horizon + 1, dtype=np.float64)
    mean = np.cumsum(x, axis=1) / n
    missed = (np.abs(mean[:, 29:] - 3.0) > 1.96 * 2.0 / np.sqrt(n[29:])).any(axis=1)
    assert missed.mean() > 0.2


def test_margin_shrinks_with_events_and_is_infinite_below_two() -> None:
    m = asymptotic_margin(np.array([1.0, 30.0, 300.0, 3000.0]), np.ones(4), 0.01, 500.0)
    assert math.isinf(m[0])
    assert m[1] > m[2] > m[3] > 0


def test_rho_is_tightest_at_t_opt() -> None:
    rho = optimal_rho2(0.01, 500.0)
    at = asymptotic_margin(np.array([500.0]), np.ones(1), 0.01, 500.0)[0]
    for other in (rho / 3, rho * 3):
        a = other * 500 + 1.0
        width = math.sqrt(2 * a / (500 * 500 * other) * math.log(math.sqrt(a) / 0.01))
        assert width > at
    assert np.allclose(rho2_for(0.01, np.array([500.0, 500.0])), rho)


@pytest.mark.parametrize("rate", [0.0, 0.005, 0.03, 0.5])
def test_beta_binomial_sequence_covers_rare_rates(rate: float) -> None:
    rng = np.random.default_rng(11)
    runs, horizon, alpha = 300, 2000, 0.05
    ones = np.cumsum(rng.random((runs, horizon)) < rate, axis=1).astype(np.float64)
    missed = np.zeros(runs, dtype=bool)
    for t in range(9, horizon, 10):
        lo, hi = beta_binomial_cs(ones[:, t], np.full(runs, t + 1.0), alpha)
        missed |= (rate < lo) | (rate > hi)
    se = math.sqrt(alpha * (1 - alpha) / runs)
    assert missed.mean() <= alpha + 3 * se


def test_beta_binomial_interval_contains_the_estimate_and_narrows() -> None:
    ones = np.array([0.0, 3.0, 30.0, 300.0])
    n = np.array([300.0, 300.0, 3000.0, 30000.0])
    lo, hi = beta_binomial_cs(ones, n, 0.001)
    assert (lo <= ones / n).all() and (ones / n <= hi).all()
    assert lo[0] == 0.0 and hi[0] < 0.06
    assert hi[3] - lo[3] < hi[2] - lo[2] < hi[1] - lo[1]
    lo0, hi0 = beta_binomial_cs(np.array([0.0]), np.array([0.0]), 0.01)
    assert (lo0[0], hi0[0]) == (0.0, 1.0)
