"""Every ``driftmon_*`` Prometheus metric (SPEC §5), on an injected registry, and the HTTP server.

prometheus_client appends ``_total`` to counter names, so ``Counter("driftmon_events", ...)``
is exposed as ``driftmon_events_total``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from driftmon.core import compiled_label
from driftmon.core.events import REJECTION_REASONS

ALERT_STATUSES: Final = ("ok", "error", "rejected")

# Embedding a batch of short texts on CPU takes milliseconds to a few seconds.
EMBEDDING_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_KEY: Final = ("endpoint", "model")
_FEATURE: Final = (*_KEY, "feature")
_DETECTOR: Final = (*_FEATURE, "detector")


def package_version() -> str:
    try:
        return importlib.metadata.version("driftmon")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Metrics:
    """All driftmon metrics, registered on ``registry``.

    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> metrics = Metrics(registry, version="1.2.3")
    >>> metrics.events.labels("chat", "m1").inc()
    >>> registry.get_sample_value("driftmon_events_total", {"endpoint": "chat", "model": "m1"})
    1.0
    >>> metrics.remove_key("chat", "m1", features=[], detectors=[])
    >>> registry.get_sample_value("driftmon_events_total", {"endpoint": "chat", "model": "m1"})
    """

    def __init__(self, registry: CollectorRegistry, *, version: str | None = None) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, labelnames=tuple(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, labelnames=tuple(labels), registry=registry)

        self.events = counter("driftmon_events", "Accepted events.", _KEY)
        self.events_rejected = counter(
            "driftmon_events_rejected", "Rejected input records, by reason code.", ("reason",)
        )
        self.feature_value = gauge(
            "driftmon_feature_value", "Recent mean of the feature.", _FEATURE
        )
        self.feature_baseline = gauge(
            "driftmon_feature_baseline", "Reference (baseline) mean of the feature.", _FEATURE
        )
        self.detector_statistic = gauge(
            "driftmon_detector_statistic", "Current detector test statistic.", _DETECTOR
        )
        self.detector_threshold = gauge(
            "driftmon_detector_threshold", "Detector alarm threshold.", _DETECTOR
        )
        self.drift_active = gauge(
            "driftmon_drift_active", "1 while the feature is in drift, else 0.", _FEATURE
        )
        self.drift_detections = counter("driftmon_drift_detections", "Drift detections.", _DETECTOR)
        self.last_detection_timestamp = gauge(
            "driftmon_last_detection_timestamp_seconds",
            "Unix time of the feature's last drift detection.",
            _FEATURE,
        )
        self.keys = gauge("driftmon_keys", "Monitored (endpoint, model) keys.")
        self.keys_evicted = counter(
            "driftmon_keys_evicted", "Keys evicted to stay under limits.max_keys."
        )
        self.embeddings = counter("driftmon_embeddings", "Outputs embedded.")
        self.embedding_duration = Histogram(
            "driftmon_embedding_duration_seconds",
            "Time to embed one batch of outputs.",
            buckets=EMBEDDING_BUCKETS,
            registry=registry,
        )
        self.embedding_sample_ratio = gauge(
            "driftmon_embedding_sample_ratio", "Fraction of outputs currently embedded."
        )
        self.embedding_queue = gauge(
            "driftmon_embedding_queue", "Sampled outputs waiting for the embedding worker."
        )
        self.embeddings_skipped = counter(
            "driftmon_embeddings_skipped",
            "Sampled outputs not embedded: over the global budget, or the queue was full.",
            ("reason",),
        )
        self.consumer_lag = gauge(
            "driftmon_consumer_lag", "Kafka consumer lag in records.", ("topic", "partition")
        )
        self.alerts_sent = counter(
            "driftmon_alerts_sent",
            "Alerts posted to Alertmanager, per URL, by final outcome.",
            ("status",),
        )
        self.alert_queue_dropped = counter(
            "driftmon_alert_queue_dropped", "Alerts dropped because the send queue was full."
        )
        self.checkpoints = counter("driftmon_checkpoints", "Checkpoints written.")
        self.produce_failed = counter(
            "driftmon_produce_failed",
            "Dead letters and detection records the producer could not deliver.",
            ["topic"],
        )
        # Process-wide totals: unlike driftmon_events_total{endpoint,model}, they survive
        # key eviction, so sum over time stays exact under key churn.
        self.events_accepted = counter(
            "driftmon_events_accepted", "Accepted events, all keys (survives key eviction)."
        )
        self.offset_resets = counter(
            "driftmon_offset_resets",
            "Restored or committed offsets outside the partition's log (data reset, topic "
            "recreated, retention passed it), by reason.",
            ("reason",),
        )
        self.kafka_retries = counter(
            "driftmon_kafka_retries",
            "Retriable Kafka errors retried, by operation (commit, produce, metadata).",
            ("operation",),
        )
        self.alert_send_failures = counter(
            "driftmon_alert_send_failures",
            "Failed POST attempts to Alertmanager (every attempt, retries included).",
            ("url", "error"),
        )
        self.alerts_undelivered = gauge(
            "driftmon_alerts_undelivered",
            "Alerts queued or being retried for an Alertmanager URL, not yet accepted.",
            ("url",),
        )
        self.build_info = gauge(
            "driftmon_build_info",
            "Always 1; labelled with the version and whether the per-event core is compiled.",
            ("version", "compiled"),
        )
        self.build_info.labels(version or package_version(), compiled_label()).set(1)

        # Known label values start at 0 so rate() and absent() work before the first increment.
        for reason in REJECTION_REASONS:
            self.events_rejected.labels(reason)
        for status in ALERT_STATUSES:
            self.alerts_sent.labels(status)

    def remove_key(
        self, endpoint: str, model: str, features: Iterable[str], detectors: Iterable[str]
    ) -> None:
        """Drop every series of the key (called when the key is evicted)."""
        per_feature: tuple[Gauge, ...] = (
            self.feature_value,
            self.feature_baseline,
            self.drift_active,
            self.last_detection_timestamp,
        )
        per_detector: tuple[Gauge | Counter, ...] = (
            self.detector_statistic,
            self.detector_threshold,
            self.drift_detections,
        )
        detectors = list(detectors)
        _remove(self.events, endpoint, model)
        for feature in features:
            for metric in per_feature:
                _remove(metric, endpoint, model, feature)
            for detector in detectors:
                for series in per_detector:
                    _remove(series, endpoint, model, feature, detector)

    def remove_key_detail(
        self, endpoint: str, model: str, features: Iterable[str], detectors: Iterable[str]
    ) -> None:
        """Drop a key's per-feature value, baseline and detector gauges (not its counters
        or drift state): the key fell out of the ``metrics.max_detail_keys`` window."""
        detectors = list(detectors)
        for feature in features:
            _remove(self.feature_value, endpoint, model, feature)
            _remove(self.feature_baseline, endpoint, model, feature)
            for detector in detectors:
                _remove(self.detector_statistic, endpoint, model, feature, detector)
                _remove(self.detector_threshold, endpoint, model, feature, detector)

    def remove_partition_lag(self, topic: str, partition: int | str) -> None:
        """Drop the lag series of a partition this consumer no longer owns."""
        _remove(self.consumer_lag, topic, str(partition))


def _remove(metric: Counter | Gauge, *labelvalues: str) -> None:
    # Older prometheus_client versions raise KeyError for a series that was never created.
    with suppress(KeyError):
        metric.remove(*labelvalues)


def serve(
    registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool]
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve /metrics, /healthz and /readyz in a daemon thread.

    Stop it with ``server.shutdown(); server.server_close()``.
    """

    handler = functools.partial(_Handler, registry=registry, ready=ready)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="driftmon-metrics", daemon=True)
    thread.start()
    return server, thread


class _Handler(BaseHTTPRequestHandler):
    def __init__(
        self,
        *args: Any,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        **kwargs: Any,
    ) -> None:
        # The base constructor handles the request, so the attributes must exist first.
        self.registry = registry
        self.ready = ready
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            if self.ready():
                self._reply(200, b"ok\n")
            else:
                self._reply(503, b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""
