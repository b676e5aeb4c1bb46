"""Per-key series produced at scrape time from a snapshot, not kept as labelled children.

``driftmon_events_total{endpoint,model}`` and the per-feature gauges (value, baseline,
detector statistic and threshold) exist for every monitored key, and keys come and go:
with labelled ``Counter``/``Gauge`` children, each new key created series that had to be
found and removed again on eviction (hundreds of ``remove`` calls per key), and a flood
of short-lived keys left tens of thousands of series in every scrape until the next
clean-up. Here the daemon publishes, once per metrics refresh, what its monitors hold
now; a scrape renders exactly that. A key that is evicted is simply absent from the next
snapshot: eviction costs nothing, and a scrape never shows more keys than are monitored.

The events counter counts each key's accepted events since the process started (the
daemon keeps the counts; the checkpointed ``KeyState.events`` would step back after a
crash and read as a reset). A key evicted and seen again restarts from zero: a counter
reset, which ``rate()`` and ``increase()`` handle; process-wide totals that survive eviction are
``driftmon_events_accepted_total`` and ``driftmon_events_rejected_total``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_KEY: Final = ["endpoint", "model"]
_FEATURE: Final = [*_KEY, "feature"]
_DETECTOR: Final = [*_FEATURE, "detector"]

KeyLabels = tuple[str, str]
FeatureLabels = tuple[str, str, str]
DetectorLabels = tuple[str, str, str, str]


class KeySeries(Collector):
    """The snapshot behind the per-key series; safe to publish from one thread while
    another scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: Mapping[KeyLabels, float] = {}
        self._features: dict[FeatureLabels, tuple[float, float]] = {}
        self._detectors: Mapping[DetectorLabels, tuple[float, float]] = {}

    def publish(
        self,
        events: Mapping[KeyLabels, float],
        features: dict[FeatureLabels, tuple[float, float]],
        detectors: Mapping[DetectorLabels, tuple[float, float]],
    ) -> None:
        """Replace the snapshot: events per key, (value, baseline) per feature and
        (statistic, threshold) per detector. The caller gives up the containers."""
        with self._lock:
            self._events, self._features, self._detectors = events, features, detectors

    def pin(self, labels: FeatureLabels, value: float | None, baseline: float | None) -> None:
        """Show a feature's value and/or baseline now, before the next snapshot (a drift
        was just detected: rules read its baseline together with the drift flag)."""
        with self._lock:
            old_value, old_baseline = self._features.get(labels, (float("nan"),) * 2)
            self._features[labels] = (
                old_value if value is None else value,
                old_baseline if baseline is None else baseline,
            )

    def events(self, endpoint: str, model: str) -> float | None:
        return self._events.get((endpoint, model))

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            events, features, detectors = self._events, dict(self._features), self._detectors
        return self._families(events, features, detectors)

    @staticmethod
    def _families(
        events: Mapping[KeyLabels, float] | None = None,
        features: Mapping[FeatureLabels, tuple[float, float]] | None = None,
        detectors: Mapping[DetectorLabels, tuple[float, float]] | None = None,
    ) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "driftmon_events", "Accepted events of each monitored key.", labels=_KEY
        )
        value = GaugeMetricFamily(
            "driftmon_feature_value",
            "Recent mean of the feature, in its own unit (see the README's feature table).",
            labels=_FEATURE,
        )
        baseline = GaugeMetricFamily(
            "driftmon_feature_baseline",
            "Reference (baseline) mean of the feature, in its own unit.",
            labels=_FEATURE,
        )
        statistic = GaugeMetricFamily(
            "driftmon_detector_statistic", "Current detector test statistic.", labels=_DETECTOR
        )
        threshold = GaugeMetricFamily(
            "driftmon_detector_threshold", "Detector alarm threshold.", labels=_DETECTOR
        )
        for key, n in (events or {}).items():
            total.add_metric(key, n)
        for feature, (v, b) in (features or {}).items():
            value.add_metric(feature, v)
            baseline.add_metric(feature, b)
        for detector, (s, t) in (detectors or {}).items():
            statistic.add_metric(detector, s)
            threshold.add_metric(detector, t)
        yield from (total, value, baseline, statistic, threshold)
