import math
import random

import numpy as np
import pytest

from driftmon.core.detectors import DetectorConfig
from driftmon.core.monitor import Monitor, MonitorConfig, feature_kind


def _feed(monitor, rng, n, keys=("a", "b"), shift_at=None):
    out = []
    for i in range(n):
        ep = keys[i % len(keys)]
        mu = 1.0 if shift_at is not None and i >= shift_at and ep == keys[0] else 0.0
        feats = {"output_chars": rng.gauss(mu, 1.0), "preamble": float(rng.random() < 0.1)}
        out.extend(monitor.update(ep, "m1", feats, 1000.0 + i))
    return out


def test_feature_kinds():
    assert feature_kind("output_chars") == "continuous"
    assert feature_kind("refusal") == "binary"
    assert feature_kind("must_cite_source") == "binary"  # contract checks are 0/1


def test_detection_names_key_feature_and_time():
    m = Monitor(MonitorConfig(), feature_count=lambda _e: 2)
    found = _feed(m, random.Random(0), 6000, shift_at=3000)
    assert found, "a 1σ shift on key a must be detected"
    d = found[0]
    assert (d.endpoint, d.model, d.feature) == ("a", "m1", "output_chars")
    assert d.timestamp is not None and d.timestamp >= 1000.0 + 3000
    assert {x.endpoint for x in found} == {"a"}


def test_max_keys_evicts_least_recently_seen_and_counts():
    m = Monitor(MonitorConfig(max_keys=2), feature_count=lambda _e: 1)
    for ep in ("a", "b", "a", "c"):
        m.update(ep, "m", {"output_chars": 1.0}, None)
    assert {(k.endpoint, k.model) for k in m.key_states()} == {("a", "m"), ("c", "m")}
    assert m.keys_evicted == 1
    assert m.drain_evicted() == [("b", "m")]
    assert m.drain_evicted() == []


def test_snapshot_restore_continues_identically():
    cfg = MonitorConfig(detector=DetectorConfig(warmup=100))
    full = Monitor(cfg, feature_count=lambda _e: 2)
    rng_full = random.Random(5)
    part = Monitor(cfg, feature_count=lambda _e: 2)
    rng_part = random.Random(5)
    _feed(full, rng_full, 2000)
    _feed(part, rng_part, 2000)
    restored = Monitor(cfg, feature_count=lambda _e: 2)
    restored.restore(part.snapshot())
    a = _feed(full, rng_full, 4000, shift_at=1000)
    b = _feed(restored, rng_part, 4000, shift_at=1000)
    assert a and [x.as_dict() for x in a] == [x.as_dict() for x in b]


def test_restore_refuses_other_versions_and_settings():
    m = Monitor(MonitorConfig(), feature_count=lambda _e: 1)
    other = Monitor(MonitorConfig(max_keys=5), feature_count=lambda _e: 1)
    with pytest.raises(ValueError, match="other detector settings"):
        m.restore(other.snapshot())
    import pickle

    with pytest.raises(ValueError, match="version"):
        m.restore(pickle.dumps({"version": 999}))
    # A snapshot that cannot be unpickled at all (truncated, or naming a class that is
    # gone) is refused the same way, so the daemon starts fresh instead of crashing.
    with pytest.raises(ValueError, match="unreadable"):
        m.restore(pickle.dumps({"version": 999})[:-3])
    with pytest.raises(ValueError, match="unreadable"):
        m.restore(b"\x80\x05\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x08driftmon\x8c\x04Gone\x93.")


def _vectors(rng, n, spread=1.0, p=32):
    centre = np.eye(p)[0]
    x = centre + spread * 0.2 * rng.normal(size=(n, p)) * np.exp(-np.arange(p) / 8)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_embedding_distance_is_fed_as_normal_scores_and_reported_as_distances():
    rng = np.random.default_rng(3)
    cfg = MonitorConfig(events_per_false_alarm=10_000)
    m = Monitor(cfg, feature_count=lambda _e: 2)
    for v in _vectors(rng, 399):
        assert m.update_embedding("a", "m", v, None) == []
    state = m.get("a", "m")
    assert state is not None and "embedding_distance" not in state.streams
    # The 400th vector calibrates the reference: its 200 held-out scores go in at once.
    m.update_embedding("a", "m", _vectors(rng, 1)[0], None)
    dist = state.streams["embedding_distance"]
    assert dist.n == 200 and abs(dist.current) < 1.0
    for v in _vectors(rng, 300):
        assert m.update_embedding("a", "m", v, None) == []
    assert dist.n == 500 and abs(dist.baseline) < 0.2  # scores: centred near 0
    held_out = state.embedding.reference.held_out_distances
    # Metrics and views show distances: the score 0 is the held-out median.
    assert state.display("embedding_distance", 0.0) == pytest.approx(np.median(held_out))
    assert state.display("output_chars", 0.25) == pytest.approx(math.expm1(0.25))

    restored = Monitor(cfg, feature_count=lambda _e: 2)
    restored.restore(m.snapshot())
    # Answers closer to the reference: the distance falls, the MEWMA (mean shifts) is quiet.
    spread = _vectors(rng, 100, spread=0.3)
    found = [d for v in spread for d in m.update_embedding("a", "m", v, None)]
    again = [d for v in spread for d in restored.update_embedding("a", "m", v, None)]
    assert found and [d.as_dict() for d in found] == [d.as_dict() for d in again]
    d = found[0]
    assert (d.feature, d.detector) == ("embedding_distance", "page_hinkley")
    # Shown in distance units: the typical held-out distance, then a smaller one.
    assert held_out.min() <= d.baseline <= held_out.max()
    assert abs(d.baseline - np.median(held_out)) < 0.2 * np.median(held_out)
    assert d.current < d.baseline
    # The detection re-learns the embedding reference: no distance scale to show yet.
    assert not state.embedding.reference.calibrated
    assert np.isnan(state.display("embedding_distance", 0.0))
