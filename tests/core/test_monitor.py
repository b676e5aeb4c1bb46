import random

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
    assert [(k.endpoint, k.model) for k in m.drain_evicted()] == [("b", "m")]
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
