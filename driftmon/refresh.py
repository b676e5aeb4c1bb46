"""The daemon's metrics outside the per-event path: a per-tick snapshot of every key's
series (published through :mod:`driftmon.keyseries`), and the drift series, which leave
with their key.

The per-key series are rebuilt from the monitors at each refresh (every few seconds, never
per event): an evicted key is simply not in the next snapshot, so key churn costs nothing
beyond the keys that drifted. Those drift series (detections, the drift flag, the last
detection time) are the only per-key series removed one by one when a key leaves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable

import structlog
from kafka import TopicPartition

from driftmon.core.detectors import DETECTORS
from driftmon.core.drifts import ActiveDrift
from driftmon.metrics import Metrics
from driftmon.partitions import PartitionState
from driftmon.settings import Settings

log = structlog.get_logger(__name__)


class MetricsRefresh:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # (endpoint, model) → the (feature, detector) pairs that have drift series
        # (detections, drift flag, last detection time): the only per-key series removed
        # when a key leaves, so that eviction costs nothing for keys that never drifted.
        self.drift_series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        # Accepted events per key since this process started (driftmon_events_total): not
        # the checkpointed KeyState.events, which would step back after a crash and read
        # as a counter reset. Entries leave with their key.
        self.key_events: dict[tuple[str, str], int] = {}

    def count_events(self, key_counts: Counter[tuple[str, str]]) -> None:
        per_key = self.key_events
        for key, count in key_counts.items():
            per_key[key] = per_key.get(key, 0) + count
        self.metrics.events_accepted.inc(sum(key_counts.values()))

    def drift_active(self, drift: ActiveDrift) -> None:
        m = self.metrics
        labels = drift.key
        # Value and baseline with the drift flag, not at the next refresh: rules that
        # describe an active drift read them together.
        m.key_series.pin(labels, drift.current, drift.baseline)
        # A drift explained by the inputs is flagged apart: rules that page on
        # driftmon_drift_active page on model drift only.
        explained = drift.kind == "input_drift"
        m.drift_active.labels(*labels).set(0 if explained else 1)
        m.input_drift_active.labels(*labels).set(1 if explained else 0)
        self.drift_series.setdefault((drift.endpoint, drift.model), set()).add(
            (drift.feature, drift.detector)
        )
        # Wall time, not event time: rules and dashboards compare it with time().
        m.last_detection_timestamp.labels(*labels).set(drift.since)

    def drift_resolved(self, drift: ActiveDrift) -> None:
        """The drift flag to 0, or away when its key's drift series are gone already (the
        key was evicted or dropped): a flag set again then would never be removed."""
        if (drift.endpoint, drift.model) in self.drift_series:
            self.metrics.drift_active.labels(*drift.key).set(0)
            self.metrics.input_drift_active.labels(*drift.key).set(0)
        else:
            self.metrics.remove_key(drift.endpoint, drift.model, {drift.feature}, ())

    def remove_key(self, endpoint: str, model: str) -> None:
        """Drop the drift series of a key that left (evicted, partition dropped; the caller
        checks no other partition still has it). O(1) for the many keys that never
        drifted: their other series are in the KeySeries snapshot, which the next refresh
        publishes without them."""
        self.key_events.pop((endpoint, model), None)
        series = self.drift_series.pop((endpoint, model), None)
        if series is None:
            return
        self.metrics.remove_key(endpoint, model, {f for f, _ in series}, {d for _, d in series})

    def refresh(
        self,
        partitions: Iterable[tuple[TopicPartition, PartitionState]],
        *,
        evicted: Callable[[list[tuple[str, str]]], None],
        resolve: Callable[[PartitionState], None],
        highwater: Callable[[TopicPartition], int | None],
    ) -> None:
        """Gauges, and (through ``resolve``) resolutions, per partition in turn; then the
        KeySeries snapshot is published."""
        m = self.metrics
        max_detail = self.settings.metrics.max_detail_keys
        n_keys = 0
        features: dict[tuple[str, str, str], tuple[float, float]] = {}
        detectors: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        for tp, state in partitions:
            monitor = state.pipeline.monitor
            n_keys += len(monitor)
            gone = monitor.drain_evicted()
            evicted(gone)
            if gone:
                m.keys_evicted.inc(len(gone))
            active = state.drifts.active
            shown = monitor.recent_key_states(max_detail)
            shown_ids = {(k.endpoint, k.model) for k in shown}
            for ep, model in {(ep, model) for ep, model, _ in active} - shown_ids:
                drifting = monitor.get(ep, model)
                if drifting is not None:
                    shown.append(drifting)
                    shown_ids.add((ep, model))
            for key in shown:
                for name, stream in key.streams.items():
                    labels = (key.endpoint, key.model, name)
                    drift = active.get(labels)
                    # While a drift is active, show the baseline it was detected against,
                    # not the one being re-learned from post-change data.
                    features[labels] = (
                        key.display(name, stream.current),
                        key.display(name, stream.baseline) if drift is None else drift.baseline,
                    )
                    stats = stream.statistics()
                    for det in DETECTORS:  # NaN while re-learning: no detector runs
                        detectors[(*labels, det)] = stats.get(det, (math.nan, math.nan))
            for labels, drift in active.items():  # e.g. the MEWMA's "embedding": no stream
                features.setdefault(labels, (drift.current, drift.baseline))
            resolve(state)
            pipeline = state.pipeline
            skipped = pipeline.skipped
            for reason, count in (skipped - pipeline.skipped_reported).items():
                m.input_skipped.labels(reason).inc(count)
            pipeline.skipped_reported = Counter(skipped)
            errors = pipeline.monitor.input_errors
            for error, count in (errors - pipeline.input_errors_reported).items():
                m.attribution_errors.labels(error).inc(count)
                # The exception type only: its message could quote a prompt.
                log.warning("attribution input model failed; restarted", error=error, keys=count)
            pipeline.input_errors_reported = Counter(errors)
            high = highwater(tp)
            pos = state.next_offset
            if high is not None and pos is not None:
                # Negative when the log ends below the position (a reset broker): shown.
                m.consumer_lag.labels(tp.topic, str(tp.partition)).set(high - pos)
        m.keys.set(n_keys)
        # Every key still counted is monitored: evicted and dropped ones were removed above.
        m.key_series.publish(dict(self.key_events), features, detectors)
