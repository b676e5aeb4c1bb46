import math
import random
from statistics import NormalDist

import numpy as np
import pytest

from driftmon.core.calibration import (
    adwin_delta,
    cgf_root,
    ph_threshold_binary,
    ph_threshold_continuous,
    shape_table,
)
from driftmon.core.monitor import Monitor, MonitorConfig

NORMAL_Q = np.array([NormalDist().inv_cdf((i + 0.5) / 64) for i in range(64)])
NORMAL_SHAPE = shape_table(NORMAL_Q, 0.25)


def test_cgf_root_of_a_normal_walk_is_twice_the_drift():
    # For Y ~ N(-k, 1), E[exp(θY)] = 1 at θ = 2k.
    y = NORMAL_Q - 0.25
    assert cgf_root(y)[0] == pytest.approx(0.5, rel=0.03)


def test_cgf_root_is_infinite_when_the_walk_never_rises():
    assert math.isinf(cgf_root(np.array([-0.3, -0.1]))[0])


def test_known_reference_threshold_matches_siegmund_for_normal_data():
    # Two-sided ARL with known parameters: each side (exp(2kb) - 2kb - 1) / (2k^2).
    k, target = 0.25, 1e5
    h = ph_threshold_continuous(NORMAL_SHAPE, k, n_ref=10**9, target_arl=target)
    b = h + 1.166
    one_side = (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k)
    # 64 quantiles stand for the law, so the tails are slightly thin: within 30 %.
    assert one_side / 2 == pytest.approx(target, rel=0.3)


def test_estimated_reference_needs_a_higher_threshold():
    known = ph_threshold_continuous(NORMAL_SHAPE, 0.25, 10**9, 1e6)
    short = ph_threshold_continuous(NORMAL_SHAPE, 0.25, 300, 1e6)
    longer = ph_threshold_continuous(NORMAL_SHAPE, 0.25, 3000, 1e6)
    assert known < longer < short


def test_thresholds_grow_with_the_budget():
    hs = [ph_threshold_binary(5, 300, 0.25, a) for a in (1e3, 1e4, 1e5, 1e6)]
    assert hs == sorted(hs) and hs[0] < hs[-1]
    ds = [adwin_delta(a, "continuous") for a in (1e3, 1e4, 1e5, 1e6, 1e8)]
    assert ds == sorted(ds, reverse=True) and all(0 < d <= 0.5 for d in ds)


def test_rare_rate_with_no_events_in_warmup_gets_a_finite_threshold():
    h = ph_threshold_binary(0, 300, 0.25, 1e6)
    assert 100 < h < 1e5


def _null_rate(feature, sampler, budget, keys, events, seed=3):
    monitor = Monitor(MonitorConfig(events_per_false_alarm=budget), feature_count=lambda _e: 1)
    rng = random.Random(seed)
    alarms = 0
    for key in range(keys):
        for _ in range(events):
            alarms += len(monitor.update(f"k{key}", "m", {feature: sampler(rng)}, None))
    return keys * events / max(alarms, 1), alarms


@pytest.mark.slow
@pytest.mark.parametrize(
    ("feature", "sampler"),
    [
        ("output_chars", lambda r: r.gauss(6.5, 0.8)),
        ("sentence_words", lambda r: math.exp(r.gauss(2.8, 1.0))),
        ("markdown_start", lambda r: 1.0 if r.random() < 0.2 else 0.0),
    ],
    ids=["gaussian", "lognormal", "rate"],
)
def test_null_streams_meet_the_budget_within_a_factor_of_two(feature, sampler):
    # 300k null events per distribution at a budget of 3000 events per false alarm:
    # about 100 expected alarms, so a factor of 2 is far outside the sampling noise.
    measured, alarms = _null_rate(feature, sampler, budget=3000, keys=10, events=30_000)
    assert alarms > 20
    assert 3000 / 2 <= measured <= 3000 * 2
