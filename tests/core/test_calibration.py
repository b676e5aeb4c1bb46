import math
import random
from statistics import NormalDist

import numpy as np
import pytest

from driftmon.core.calibration import (
    RARE_SHARE,
    TAIL_MIN_REF,
    TAIL_RATE_MAX,
    TAIL_RATE_MIN,
    TAIL_SHARE,
    _BinaryRates,
    _siegmund_arl,
    _siegmund_offset,
    adwin_binary_rate_ratio,
    adwin_delta,
    cgf_root,
    cusum_rate,
    is_rare,
    ph_threshold_binary,
    ph_threshold_continuous,
    rare_rate_bound,
    rare_steps,
    rare_threshold_binary,
    shape_table,
    tail_steps,
    tail_threshold,
    two_point_cycle,
    two_point_root,
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
        ("refusal", lambda r: 1.0 if r.random() < 0.005 else 0.0),
    ],
    ids=["gaussian", "lognormal", "rate", "rare-rate"],
)
def test_null_streams_meet_the_budget_within_a_factor_of_two(feature, sampler):
    # 300k null events per distribution at a budget of 3000 events per false alarm:
    # about 100 expected alarms, so a factor of 2 is far outside the sampling noise.
    measured, alarms = _null_rate(feature, sampler, budget=3000, keys=10, events=30_000)
    assert alarms > 20
    assert 3000 / 2 <= measured <= 3000 * 2


# -- exact run lengths of 0/1 features --------------------------------------------------


def _markov_arl(up, down, p_up, h):
    """Zero-state ARL of S <- max(0, S + Y) on an integer lattice, by a direct linear solve."""
    states = list(range(int(h) + 1))  # S = 0 .. floor(h); S > h is the alarm
    q = np.zeros((len(states), len(states)))
    for s in states:
        if s + up <= h:
            q[s, s + up] += p_up
        q[s, max(0, s - down)] += 1.0 - p_up
    arl = np.linalg.solve(np.eye(len(states)) - q, np.ones(len(states)))
    return arl[0]


@pytest.mark.parametrize(
    ("up", "down", "p_up", "h"),
    [(2, 1, 0.3, 7.5), (1, 2, 0.6, 6.5), (1, 1, 0.45, 9.5), (5, 1, 0.1, 12.5)],
    ids=["rises-in-jumps", "falls-in-jumps", "symmetric", "rare-jumps"],
)
def test_two_point_cycle_matches_a_markov_chain_solve(up, down, p_up, h):
    alarm, length = two_point_cycle(float(up), float(down), np.array([p_up]), h, tol=1e-16)
    assert length[0] / alarm[0] == pytest.approx(_markov_arl(up, down, p_up, h), rel=1e-9)


def _simulated_arl(up, down, p_up, h, walks, seed):
    """Mean run length of ``walks`` independent CUSUMs started at 0 (vectorised)."""
    rng = np.random.default_rng(seed)
    s = np.zeros(walks)
    run = np.zeros(walks, dtype=np.int64)
    alive = np.ones(walks, dtype=bool)
    t = 0
    while alive.any():
        t += 1
        step = np.where(rng.random(walks) < p_up, up, -down)
        s = np.where(alive, np.maximum(0.0, s + step), s)
        fired = alive & (s > h)
        run[fired] = t
        alive &= ~fired
    return run.mean(), run.std() / math.sqrt(walks)


@pytest.mark.parametrize(
    ("p_ref", "p_true", "steps"), [(0.005, 0.01, 1.5), (0.05, 0.08, 2.5), (0.3, 0.3, 5.0)]
)
def test_exact_arl_of_a_standardised_rate_matches_simulation(p_ref, p_true, steps):
    # The increments a standardised 0/1 feature feeds its upper CUSUM (k = 0.25), with a
    # threshold of a few jumps so that the ARL is small enough to simulate.
    k = 0.25
    sd = math.sqrt(p_ref * (1 - p_ref))
    up, down = (1 - p_ref) / sd - k, k + p_ref / sd
    h = steps * max(up, down)
    alarm, length = two_point_cycle(up, down, np.array([p_true]), h, tol=1e-16)
    exact = length[0] / alarm[0]
    simulated, se = _simulated_arl(up, down, p_true, h, walks=4000, seed=5)
    assert 30 < exact < 3000
    assert abs(simulated - exact) < 4 * se


def test_siegmund_overstates_the_rate_of_a_rare_rate():
    # A rare 1 is one big jump: its overshoot is far larger than the normal walk's.
    k, p = 0.25, 0.005
    sd = math.sqrt(p * (1 - p))
    up, down = (1 - p) / sd - k, k + p / sd
    h = 2.5 * up
    alarm, length = two_point_cycle(up, down, np.array([p]), h, tol=1e-16)
    y = np.array([[up, -down]])
    w = np.array([[p, 1 - p]])
    mean = float((w * y).sum())
    sd_y = math.sqrt(float((w * (y - mean) ** 2).sum()))
    siegmund = cusum_rate(cgf_root(y, w), np.array([mean]), np.array([sd_y]), np.array([h]))
    assert alarm[0] / length[0] < 0.7 * siegmund[0, 0]


def test_two_point_root_solves_the_moment_equation_for_both_drifts():
    p = np.array([0.01, 0.2, 0.4, 0.7])
    theta = two_point_root(1.0, 0.5, p)
    mean = p * 1.0 - (1 - p) * 0.5
    assert np.all(np.sign(theta) == -np.sign(mean))
    mgf = p * np.exp(theta * 1.0) + (1 - p) * np.exp(-theta * 0.5)
    assert mgf == pytest.approx(np.ones(4), rel=1e-9)


def test_siegmund_offset_inverts_siegmund_arl():
    theta = np.array([0.8, 0.05, 1e-7, -0.3, -2.0])
    mean = np.array([-0.4, -0.025, -5e-8, 0.15, 1.0])
    var = np.ones(5)
    b = np.array([3.0, 40.0, 7.0, 12.0, 0.5])
    arl = _siegmund_arl(theta, mean, var, b)
    assert _siegmund_offset(arl, theta, mean, var) == pytest.approx(b, rel=1e-6)


def _posterior_rate(successes, n_ref, h, target):
    """The exact posterior-averaged two-sided rate, straight from the cycles (no cap)."""
    rates = _BinaryRates(successes, n_ref, 0.25, 1e-6 * target)
    return sum(rates.weights @ rates._exact(i, h) for i in range(len(rates.sides)))


@pytest.mark.parametrize(("successes", "n_ref"), [(0, 300), (1, 300), (20, 300), (2, 2400)])
def test_binary_threshold_is_the_smallest_meeting_the_target(successes, n_ref):
    target_arl = 2e4
    h = ph_threshold_binary(successes, n_ref, 0.25, target_arl)
    assert _posterior_rate(successes, n_ref, h, 1 / target_arl) <= 1 / target_arl
    assert _posterior_rate(successes, n_ref, 0.995 * h, 1 / target_arl) > 1 / target_arl


def test_threshold_beyond_the_exact_range_extrapolates_the_exact_overshoot():
    # p̃ = 0.3: the exact range ends at EXACT_STEPS larger steps; at twice that the fitted
    # overshoot gives the exact rate to 2 %.
    rates = _BinaryRates(90, 300, 0.25, 1e-16)
    for side in range(len(rates.sides)):
        h = 2 * rates.cap(side)
        fitted = rates.weights @ rates.side_rate(side, h)
        exact = rates.weights @ rates._exact(side, h)
        assert fitted == pytest.approx(exact, rel=0.02)


def test_page_hinkley_takes_the_share_adwin_leaves_on_rare_rates():
    rare_alone = ph_threshold_binary(2, 600, 0.25, 2e4)
    rare_shared = ph_threshold_binary(2, 600, 0.25, 2e4, adwin_share=True)
    half_alone = ph_threshold_binary(300, 600, 0.25, 2e4)
    half_shared = ph_threshold_binary(300, 600, 0.25, 2e4, adwin_share=True)
    assert rare_shared < 0.97 * rare_alone
    assert half_shared == pytest.approx(half_alone, rel=0.01)  # ADWIN spends its share


def test_adwin_binary_fraction_is_symmetric_monotone_and_at_most_one():
    p = np.array([1e-5, 1e-4, 5e-4, 0.003, 0.05, 0.3, 0.5])
    f = adwin_binary_rate_ratio(p)
    assert np.all(np.diff(f) > 0) and f[-1] == pytest.approx(1.0)
    assert adwin_binary_rate_ratio(1 - p) == pytest.approx(f)
    assert f[0] == pytest.approx(f[1] / 10)  # proportional below the measured rates


# -- rare 0/1 rates: the likelihood-ratio CUSUM -------------------------------------------


def test_a_rate_estimated_at_zero_is_bounded_above_zero():
    assert rare_rate_bound(0, 600) == pytest.approx(1 / 601)
    assert rare_rate_bound(600, 600) == rare_rate_bound(0, 600)  # the minority value
    assert is_rare(0, 300) and is_rare(11, 600) and not is_rare(12, 600)
    assert not is_rare(150, 300)
    assert math.isinf(rare_threshold_binary(150, 300, 2e4))
    up, down = rare_steps(0, 600)
    assert up == pytest.approx(math.log(0.2 * 601)) and 0.2 < down < 0.23


def _rare_posterior_rate(successes, n_ref, h, target):
    rates = _BinaryRates(successes, n_ref, 0.0, 1e-6 * target, likelihood_ratio=True)
    return float(rates.weights @ rates._exact(0, h))


@pytest.mark.parametrize(("successes", "n_ref"), [(0, 300), (0, 600), (3, 600), (0, 2400)])
def test_rare_threshold_is_the_smallest_meeting_its_share(successes, n_ref):
    target_arl = 3.4e7
    share = RARE_SHARE / target_arl
    h = rare_threshold_binary(successes, n_ref, target_arl)
    assert _rare_posterior_rate(successes, n_ref, h, share) <= share
    assert _rare_posterior_rate(successes, n_ref, 0.995 * h, share) > share


def test_exact_arl_of_the_likelihood_ratio_cusum_matches_simulation():
    # The walk a rare stream's likelihood-ratio CUSUM runs when the true rate is four times
    # the bound (a reference that under-stated it), at a threshold low enough to simulate.
    up, down = rare_steps(0, 600)
    p_true, h = 4 / 601, 1.5 * up
    alarm, length = two_point_cycle(up, down, np.array([p_true]), h, tol=1e-16)
    exact = length[0] / alarm[0]
    simulated, se = _simulated_arl(up, down, p_true, h, walks=4000, seed=7)
    assert 100 < exact < 3000
    assert abs(simulated - exact) < 4 * se


def test_a_rare_rate_shares_page_hinkleys_budget_with_its_likelihood_ratio_cusum():
    # Page-Hinkley's two-sided threshold moves to the remaining share; a rate that is not
    # rare keeps its whole budget.
    alone = ph_threshold_binary(0, 600, 0.25, 2e4)
    shared = ph_threshold_binary(0, 600, 0.25, 2e4, rare_share=True)
    half = ph_threshold_binary(0, 600, 0.25, 2e4 / (1 - RARE_SHARE))
    assert shared > alone and shared == pytest.approx(half, rel=0.01)
    common = ph_threshold_binary(60, 600, 0.25, 2e4)
    assert ph_threshold_binary(60, 600, 0.25, 2e4, rare_share=True) == common


def _tail_posterior_rate(successes, n_ref, h, target):
    rates = _BinaryRates(
        successes,
        n_ref,
        0.0,
        1e-4 * target,
        likelihood_ratio=True,
        steps=tail_steps(successes, n_ref),
    )
    return float(rates.weights @ rates._exact(0, h))


@pytest.mark.parametrize(("successes", "n_ref"), [(124, 1200), (247, 2400), (108, 2400)])
def test_tail_threshold_is_the_smallest_meeting_half_its_share(successes, n_ref):
    target_arl = 3.4e7
    share = TAIL_SHARE / 2 / target_arl
    h = tail_threshold(successes, n_ref, target_arl)
    assert _tail_posterior_rate(successes, n_ref, h, share) <= share
    assert _tail_posterior_rate(successes, n_ref, 0.995 * h, share) > share


def test_tails_wait_for_a_large_enough_reference_and_a_small_enough_rate():
    up, down = tail_steps(240, 2400)
    assert up == pytest.approx(math.log(2.0)) and 0.11 < down < 0.13
    assert math.isinf(tail_threshold(60, TAIL_MIN_REF // 2, 3.4e7))
    assert math.isinf(tail_threshold(int(TAIL_RATE_MAX * 2400) + 2, 2400, 3.4e7))
    assert math.isinf(tail_threshold(int(TAIL_RATE_MIN * 2400) - 2, 2400, 3.4e7))
    # More reference, a better known rate, a lower threshold.
    assert tail_threshold(120, 1200, 3.4e7) > tail_threshold(480, 4800, 3.4e7)


@pytest.mark.slow
@pytest.mark.parametrize("p", [0.002, 0.0])
def test_rare_null_streams_meet_the_budget_within_a_factor_of_two(p):
    # Both Page-Hinkley's CUSUMs and ADWIN, the reference from each key's warm-up; at p = 0
    # nothing may fire at all (the bound is above the true rate).
    sampler = (lambda r: 1.0 if r.random() < p else 0.0) if p else (lambda r: 0.0)
    measured, alarms = _null_rate("truncated", sampler, budget=20_000, keys=10, events=100_000)
    if p:
        assert alarms > 20
        assert 20_000 / 2 <= measured <= 20_000 * 2
    else:
        assert alarms == 0
