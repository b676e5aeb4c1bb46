import math
import random

import pytest

from driftmon.core.detectors import DetectorConfig
from driftmon.core.drifts import (
    ActiveDrift,
    DriftTracker,
    InvalidDriftEntry,
    ResolvePolicy,
    is_quiet,
)
from driftmon.core.monitor import Monitor, MonitorConfig

POLICY = ResolvePolicy(warmup_events=100, quiet_events=50, min_active=0)


def _monitor() -> Monitor:
    return Monitor(MonitorConfig(detector=DetectorConfig(warmup=100)), feature_count=lambda _e: 1)


def _run(monitor, tracker, policy, n=3000, shift_at=1000, seed=0):
    """A 1σ shift of output_chars on key a at ``shift_at``; time is the event index."""
    rng = random.Random(seed)
    fired, resolved = [], []
    for i in range(n):
        mu = 1.0 if i >= shift_at else 0.0
        for det in monitor.update("a", "m1", {"output_chars": rng.gauss(mu, 1.0)}, 1000.0 + i):
            fired.append((i, det.feature, det.detector))
            tracker.fire(ActiveDrift.from_detection(det, detected_at=det.timestamp, since=i))
        resolved.extend((i, d.feature) for d in tracker.resolve_quiet(monitor, i, policy))
    return fired, resolved


def _drift(feature="output_chars", since=0.0, model="m1"):
    return ActiveDrift("a", model, feature, "adwin", 1.0, 2.0, 400, 12, 1_700_000_000.0, since)


def test_a_drift_resolves_once_its_stream_is_quiet_for_warmup_plus_quiet_events():
    tracker = DriftTracker()
    fired, resolved = _run(_monitor(), tracker, POLICY)
    [(at, feature, detector)] = fired
    assert 1000 <= at <= 1100 and (feature, detector) == ("output_chars", "page_hinkley")
    assert resolved == [(at + 100 + 50, "output_chars")]
    assert not tracker.active and tracker.changed


def test_never_before_min_active_even_when_quiet():
    tracker = DriftTracker()
    policy = ResolvePolicy(warmup_events=100, quiet_events=50, min_active=500)
    fired, resolved = _run(_monitor(), tracker, policy)
    [(at, _, _)] = fired
    assert resolved == [(at + 500, "output_chars")]


def test_a_refire_replaces_the_drift_and_restarts_its_time():
    tracker = DriftTracker()
    tracker.fire(_drift(since=10.0))
    tracker.saved()
    tracker.fire(_drift(since=20.0))
    assert len(tracker) == 1 and tracker.changed
    assert tracker.get(("a", "m1", "output_chars")) == _drift(since=20.0)
    policy = ResolvePolicy(0, 1, min_active=15)
    # No such key in the monitor: quiet, but not active long enough yet.
    assert tracker.resolve_quiet(_monitor(), 30.0, policy) == []
    assert tracker.resolve_quiet(_monitor(), 35.0, policy) == [_drift(since=20.0)]


def test_a_restored_drift_is_active_and_unchanged():
    tracker = DriftTracker()
    tracker.restore([_drift(), _drift("refusal")])
    assert ("a", "m1", "refusal") in tracker and not tracker.changed


def test_gone_keys_and_streams_and_an_unfitted_embedding_are_quiet():
    monitor = _monitor()
    monitor.update("a", "m1", {"output_chars": 1.0}, None)
    assert is_quiet(("gone", "m1", "output_chars"), monitor, POLICY)
    assert is_quiet(("a", "m1", "never_seen"), monitor, POLICY)
    assert not is_quiet(("a", "m1", "output_chars"), monitor, POLICY)  # still learning
    assert is_quiet(("a", "m1", "embedding"), monitor, POLICY)  # no embedding state


def test_json_round_trip_and_rejects():
    drift = _drift()
    unknown = ActiveDrift(**{**drift.__dict__, "current": math.nan})
    assert ActiveDrift.from_json(drift.to_json()) == drift
    assert unknown.to_json()["current"] is None
    assert math.isnan(ActiveDrift.from_json(unknown.to_json()).current)
    with pytest.raises(InvalidDriftEntry, match="drift"):
        ActiveDrift.from_json({**drift.to_json(), "key_events": 1.5})


def test_the_kind_round_trips_and_old_entries_are_model_drifts():
    explained = ActiveDrift(**{**_drift().__dict__, "kind": "input_drift"})
    assert ActiveDrift.from_json(explained.to_json()) == explained
    old = {k: v for k, v in _drift().to_json().items() if k != "kind"}  # an older checkpoint
    assert ActiveDrift.from_json(old).kind == "drift"
    with pytest.raises(InvalidDriftEntry, match="drift"):
        ActiveDrift.from_json({**explained.to_json(), "kind": "prompt"})
