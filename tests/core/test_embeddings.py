import pickle
from statistics import NormalDist

import numpy as np
import pytest

from driftmon.core.embeddings import (
    EmbeddingReference,
    EmbeddingStream,
    MewmaDetector,
    ledoit_wolf_shrinkage,
    mewma_threshold,
    shrunk_covariance,
)

P = 64
_Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(P, P)))
_SCALES = 0.3 * np.exp(-np.arange(P - 1) / 8)


def embeddings(rng, n, shift=0.0):
    """Unit vectors around a centroid (``_Q[:, 0]``) with a decaying spectrum.

    ``shift`` moves the mean by that many standard deviations along the 9th to 16th
    directions of spread, all orthogonal to the centroid.
    """
    z = rng.normal(size=(n, P - 1))
    z[:, 8:16] += shift
    x = _Q[:, 0] + (z * _SCALES) @ _Q[:, 1:].T
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(rng, rank=16, distance_rank=None, **kwargs):
    ref = EmbeddingReference(
        fit_n=200, calib_n=200, rank=rank, distance_rank=distance_rank, **kwargs
    )
    for v in embeddings(rng, 400):
        ref.add(v)
    return ref


# -- Ledoit–Wolf --------------------------------------------------------------------


def test_shrinkage_improves_on_the_sample_covariance_when_n_is_small():
    rng = np.random.default_rng(1)
    p = 50
    true = np.diag(np.exp(-np.arange(p) / 10))
    x = rng.multivariate_normal(np.zeros(p), true, size=40)
    shrunk, shrinkage = shrunk_covariance(x)
    sample = np.cov(x, rowvar=False, bias=True)
    assert 0.05 < shrinkage < 0.95
    assert np.linalg.norm(shrunk - true) < 0.7 * np.linalg.norm(sample - true)
    assert np.isclose(np.trace(shrunk), np.trace(sample))


def test_shrinkage_is_near_one_for_a_spherical_and_near_zero_for_a_well_sampled_covariance():
    rng = np.random.default_rng(2)
    spherical = rng.normal(scale=3.0, size=(100, 30))
    assert ledoit_wolf_shrinkage(spherical - spherical.mean(axis=0)) > 0.8
    elongated = rng.normal(size=(20_000, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    shrunk, shrinkage = shrunk_covariance(elongated)
    assert shrinkage < 0.01
    assert np.allclose(np.diag(shrunk), [25.0, 4.0, 1.0, 0.25, 0.01], rtol=0.05, atol=0.01)


def test_minimum_shrinkage_is_applied():
    rng = np.random.default_rng(3)
    _, shrinkage = shrunk_covariance(rng.normal(size=(5000, 4)) * [3, 2, 1, 0.5], 0.3)
    assert shrinkage == 0.3


def test_shrinkage_matches_scikit_learn():
    covariance = pytest.importorskip(
        "sklearn.covariance", reason="scikit-learn is not installed (the test extra has it)"
    )
    rng = np.random.default_rng(4)
    for n, p in ((50, 120), (300, 20)):
        x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))
        ours, s_ours = shrunk_covariance(x)
        theirs, s_theirs = covariance.ledoit_wolf(x)
        assert s_ours == pytest.approx(s_theirs, rel=1e-9)
        assert np.allclose(ours, theirs)


# -- reference ----------------------------------------------------------------------


def test_whitening_gives_identity_covariance_on_the_fit_set():
    rng = np.random.default_rng(5)
    rotation, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    x = rng.normal(size=(4000, 10)) * np.linspace(1.0, 3.0, 10) @ rotation
    ref = EmbeddingReference(fit_n=4000, calib_n=2, rank=9, min_shrinkage=0.0, distance_rank=None)
    for v in x:
        ref.add(v)
    assert ref.fitted and ref.shrinkage < 0.01
    # All ten coordinates: with rank = p − 1 the one remaining direction is exact.
    white = np.stack([ref.whitened(v) for v in x])
    assert white.shape == (4000, 10)
    assert np.allclose(white.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(np.cov(white, rowvar=False, bias=True), np.eye(10), atol=0.02)
    d2 = np.array([ref.mahalanobis(v) ** 2 for v in x])
    assert d2.mean() == pytest.approx(10.0, rel=0.02)
    assert np.allclose(d2, (white * white).sum(axis=1))
    # Fewer distance directions: the others share one variance, E[d²] is still p.
    ref4 = EmbeddingReference(fit_n=4000, calib_n=2, rank=9, min_shrinkage=0.0, distance_rank=4)
    for v in x:
        ref4.add(v)
    assert np.mean([ref4.mahalanobis(v) ** 2 for v in x]) == pytest.approx(10.0, rel=0.02)


def test_reference_learns_fit_then_held_out_parts():
    rng = np.random.default_rng(6)
    ref = EmbeddingReference(fit_n=200, calib_n=200, rank=16)
    vectors = embeddings(rng, 400)
    for v in vectors[:199]:
        ref.add(v)
    assert not ref.fitted
    ref.add(vectors[199])
    assert ref.fitted and not ref.calibrated
    for v in vectors[200:]:
        ref.add(v)
    assert ref.calibrated
    assert ref.held_out_whitened.shape == (200, P)
    assert ref.held_out_distances.shape == (200,)
    assert ref.shrinkage >= 0.3
    # Held-out answers are farther from the reference than the ones it was fitted on.
    fit_distances = np.array([ref.mahalanobis(v) for v in vectors[:200]])
    assert ref.held_out_distances.mean() > fit_distances.mean()


def test_fewer_distance_directions_memorise_the_fit_set_less():
    # The fit set's own vectors look closer than new ones (the top directions are
    # fitted to them): a stream that repeats fit answers sees its distance move when
    # they stop repeating, with no change of model. Fewer directions, smaller gap.
    gaps = {}
    for k in (16, 4):
        rng = np.random.default_rng(13)
        ref = EmbeddingReference(fit_n=200, calib_n=200, rank=16, distance_rank=k)
        fit = embeddings(rng, 200)
        for v in np.vstack([fit, embeddings(rng, 200)]):
            ref.add(v)
        held_out = ref.held_out_distances
        in_sample = np.array([ref.mahalanobis(v) for v in fit])
        gaps[k] = (held_out.mean() - in_sample.mean()) / held_out.std()
    assert gaps[16] > 0.3
    assert gaps[4] < 0.6 * gaps[16]


def test_mahalanobis_separates_a_new_cluster():
    rng = np.random.default_rng(7)
    ref = reference(rng)
    # A new cluster: the same spread around a centroid tilted by about 10 degrees, in a
    # direction the reference hardly varies in.
    tilted = embeddings(rng, 200) + 0.2 * _Q[:, 20]
    tilted /= np.linalg.norm(tilted, axis=1, keepdims=True)
    new = np.array([ref.mahalanobis(v) for v in tilted])
    held_out = ref.held_out_distances
    assert (new.mean() - held_out.mean()) / held_out.std() > 3.0
    assert (new > np.quantile(held_out, 0.99)).mean() > 0.8
    cosines = [ref.cosine_to_centroid(v) for v in tilted]
    assert 0.82 < np.mean(cosines) < 0.85  # 0.85 in the reference


def test_constant_outputs_give_finite_distances_and_a_quiet_mewma():
    ref = EmbeddingReference(fit_n=10, calib_n=10, rank=4)
    v = np.ones(8) / np.sqrt(8)
    for _ in range(20):
        ref.add(v)
    assert ref.mahalanobis(v) == pytest.approx(0.0, abs=1e-6)
    # Any real change is far away: the distance feature carries it.
    assert 1e3 < ref.mahalanobis(np.eye(8)[0]) < np.inf
    det = MewmaDetector(ref, target_arl=1000)
    assert np.isfinite(det.threshold)
    assert not any(det.update(v) for _ in range(100))


# -- MEWMA --------------------------------------------------------------------------


def test_mewma_detects_a_small_shift_that_cosine_barely_sees():
    rng = np.random.default_rng(8)
    ref = reference(rng)
    det = MewmaDetector(ref, target_arl=100_000)
    before, after = embeddings(rng, 300), embeddings(rng, 300, shift=0.75)
    hits = [i for i, v in enumerate(np.vstack([before, after])) if det.update(v)]
    assert hits[0] == 319  # 19 embeddings after the change
    cos_before = np.array([ref.cosine_to_centroid(v) for v in before])
    cos_after = np.array([ref.cosine_to_centroid(v) for v in after])
    # Per answer, the cosine moves by under a fifth of its spread.
    assert abs(cos_after.mean() - cos_before.mean()) < 0.2 * cos_before.std()


def test_mewma_stays_quiet_on_held_out_null_data():
    # 20 000 fresh null embeddings at a budget of one false alarm per 20 000: the
    # threshold errs high, so more than 3 alarms would mean it is miscalibrated.
    rng = np.random.default_rng(9)
    ref = reference(rng)
    det = MewmaDetector(ref, target_arl=20_000)
    alarms = sum(det.update(v) for v in embeddings(rng, 20_000))
    assert alarms <= 3


def topic_pool(rng, n=800, topics=40):
    """A finite pool of answers in topic clusters (unit vectors), as real answers are."""
    centres = rng.normal(size=(topics, P))
    x = centres[rng.integers(0, topics, size=n)] + 0.8 * rng.normal(size=(n, P))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mewma_false_alarms_stay_within_budget_on_clustered_answers_with_new_prompts():
    # Streams drawn with replacement from a pool of clustered answers: the reference sees
    # 400 of them, the chart then meets unseen ones and bursts of one topic. The
    # false-alarm rate, averaged over keys (their own references), must not exceed
    # the budget by more than chance allows.
    rng = np.random.default_rng(14)
    target, per_key, keys = 2_000, 10_000, 6
    alarms = 0
    for _ in range(keys):
        pool = topic_pool(rng)
        stream = pool[rng.integers(0, len(pool), size=400 + per_key)]
        ref = EmbeddingReference(fit_n=200, calib_n=200, rank=16)
        for v in stream[:400]:
            ref.add(v)
        det = MewmaDetector(ref, target_arl=target)
        alarms += sum(det.update(v) for v in stream[400:])
    expected = keys * per_key / target  # 30
    assert alarms <= 1.6 * expected


def test_threshold_grows_with_the_target_and_is_deterministic():
    rng = np.random.default_rng(10)
    held_out = reference(rng).held_out_whitened
    thresholds = [mewma_threshold(held_out, 0.1, arl) for arl in (1e3, 1e5, 1e7)]
    assert thresholds == sorted(thresholds)
    assert mewma_threshold(held_out, 0.1, 1e5) == thresholds[1]
    assert mewma_threshold(held_out, 0.1, 1e5, seed=1) != thresholds[1]


def test_detector_rejects_an_uncalibrated_reference():
    with pytest.raises(ValueError, match="calibrated"):
        MewmaDetector(EmbeddingReference(), target_arl=1000)


# -- the per-key stream and persistence ----------------------------------------------


def test_stream_fits_holds_out_monitors_and_relearns():
    rng = np.random.default_rng(11)
    stream = EmbeddingStream(target_arl=100_000, rank=16)
    steps = [stream.update(v) for v in embeddings(rng, 400)]
    assert all(s.distance is None for s in steps[:200])
    assert all(s.distance is not None and s.cosine is not None for s in steps[200:])
    assert stream.mewma is not None and set(stream.statistics()) == {"mewma"}
    drifts = [i for i, v in enumerate(embeddings(rng, 200, shift=1.5)) if stream.update(v).drift]
    assert len(drifts) == 1 and drifts[0] < 30
    # After the alarm the reference is learned again from post-change data.
    assert not stream.reference.fitted and stream.mewma is None


def test_pickle_round_trip_continues_identically():
    rng = np.random.default_rng(12)
    stream = EmbeddingStream(target_arl=10_000, rank=16)
    for v in embeddings(rng, 450):
        stream.update(v)
    restored = pickle.loads(pickle.dumps(stream))
    rest = embeddings(rng, 200, shift=0.5)
    a = [(s.distance, s.drift) for s in map(stream.update, rest)]
    b = [(s.distance, s.drift) for s in map(restored.update, rest)]
    assert a == b
    assert restored.statistics() == stream.statistics()


def test_distance_scores_are_near_normal_where_distances_have_a_long_lower_tail():
    # On real streams (a fixed pool of answers drawn with replacement) the distance has a
    # long lower tail (negative skew): answers like those the reference was fitted on lie
    # far closer than new ones. A 300-value warm-up summarised by 48 quantiles misses that
    # tail, and Page-Hinkley fired 3.3× too often at 10⁶. Here: 15 % of the answers
    # lie close to the centroid.
    rng = np.random.default_rng(21)
    pool = embeddings(rng, 800)
    close = pool[:120] - _Q[:, 0]
    pool[:120] = _Q[:, 0] + 0.1 * close
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    fit = rng.integers(0, 800, 200)
    stream = EmbeddingStream(target_arl=10_000, rank=16)
    for i in fit:
        stream.update(pool[i])
    steps = [stream.update(pool[i]) for i in rng.integers(0, 800, 2200)]
    # Nothing to feed while held out; at calibration all 200 held-out scores at once.
    assert all(s.scores == () for s in steps[:199])
    held = np.array(steps[199].scores)
    assert held.shape == (200,)
    assert stream.reference.held_out_distances[-1] == steps[199].distance
    assert np.isclose(np.median(held), 0.0, atol=0.05)
    assert all(len(s.scores) == 1 for s in steps[200:])
    distances = np.array([s.distance for s in steps[200:]])
    scores = np.array([s.scores[0] for s in steps[200:]])

    def skew(x):
        z = (x - x.mean()) / x.std()
        return float((z**3).mean())

    assert skew(distances) < -0.3
    assert abs(skew(scores)) < 0.15
    bound = -NormalDist().inv_cdf(0.5 / 200)
    assert np.abs(scores).max() <= bound + 1e-12
    # Monotone in the distance, and the inverse maps scores back to distances.
    order = np.argsort(distances)
    assert np.all(np.diff(scores[order]) >= 0.0)
    ref = stream.reference
    inside = distances[
        (distances > ref.held_out_distances.min()) & (distances < ref.held_out_distances.max())
    ]
    back = [ref.score_distance(ref.distance_score(d)) for d in inside]
    assert np.allclose(back, inside)
    # The sorted table is a cache: not pickled, rebuilt to the same scores.
    restored = pickle.loads(pickle.dumps(ref))
    assert "_score_d" not in restored.__dict__
    assert [restored.distance_score(d) for d in distances[:50]] == list(scores[:50])
