"""Every ``driftmon_*`` Prometheus metric (SPEC §5), on an injected registry (served by
``driftmon.server``).

prometheus_client appends ``_total`` to counter names, so ``Counter("driftmon_events", ...)``
is exposed as ``driftmon_events_total``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from contextlib import suppress
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftmon.core import compiled_label
from driftmon.core.events import REJECTION_REASONS
from driftmon.core.transitions import OVERALL as TRANSITION_VERDICTS
from driftmon.keyseries import KeySeries
from driftmon.server import serve as serve  # the daemon imports it from here

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
    >>> metrics.key_series.publish({("chat", "m1"): 3.0}, {}, {})
    >>> registry.get_sample_value("driftmon_events_total", {"endpoint": "chat", "model": "m1"})
    3.0
    >>> metrics.key_series.publish({}, {}, {})  # the key was evicted
    >>> registry.get_sample_value("driftmon_events_total", {"endpoint": "chat", "model": "m1"})

    Per-key series (events, feature value and baseline, detector statistic and threshold)
    come from :class:`~driftmon.keyseries.KeySeries`, a snapshot published once per
    refresh; the drift series of a key are labelled children, removed with
    :meth:`remove_key`.
    """

    def __init__(self, registry: CollectorRegistry, *, version: str | None = None) -> None:
        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, labelnames=tuple(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, labelnames=tuple(labels), registry=registry)

        self.key_series = KeySeries()
        registry.register(self.key_series)
        self.events_rejected = counter(
            "driftmon_events_rejected", "Rejected input records, by reason code.", ("reason",)
        )
        self.drift_active = gauge(
            "driftmon_drift_active",
            "1 while the feature is in drift attributed to the model, else 0.",
            _FEATURE,
        )
        self.input_drift_active = gauge(
            "driftmon_input_drift_active",
            "1 while the feature's drift is explained by a change of inputs (LLMInputDrift; "
            "driftmon_drift_active stays 0), else 0.",
            _FEATURE,
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
            "Alerts posted to Alertmanager (each URL counts once), by final outcome.",
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
            "Restored offsets outside the partition's log, by reason: beyond_end (broker data "
            "reset), before_start (retention passed it), topic_recreated, state_unreadable (a "
            "saved state that could not be used: the partition started cold).",
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
        self.webhook_posts = counter(
            "driftmon_webhook_posts",
            "Webhook sink outcomes: ok, rejected (4xx, not retried), error (retries spent), "
            "dropped (queue full or closing), failed_attempts (every POST that failed).",
            ("outcome",),
        )
        # Issue 13: messages that cannot be decompressed or decoded as a whole.
        self.messages_undecodable = counter(
            "driftmon_messages_undecodable",
            "Kafka messages (or fetched batches) that could not be decompressed or decoded, "
            "by topic and action (dead_letter or skip: input.undecodable).",
            ("topic", "action"),
        )
        self.input_skipped = counter(
            "driftmon_input_skipped",
            "Items of input messages skipped without being an error, by reason: "
            "not_inference (an OTLP span or log record that is no model answer), duplicate "
            "(a response seen twice, e.g. a span and its details event).",
            ("reason",),
        )
        self.attribution_errors = counter(
            "driftmon_attribution_errors",
            "Keys whose input model (attribution: input vs model drift) raised and was started "
            "again, by exception type; their detections went on, labelled 'drift'.",
            ("error",),
        )
        # Issue 12: version transitions (SPEC §7).
        self.transition_verdict = gauge(
            "driftmon_transition_verdict",
            "1 for the current verdict of each open or recent model transition on an "
            "endpoint (pending, unchanged, changed, breaking), 0 for the others.",
            ("endpoint", "from_model", "to_model", "verdict"),
        )
        self.transition_effect = gauge(
            "driftmon_transition_effect",
            "Effect size of a transition per feature: Cohen's d for continuous features, "
            "percentage points for rates.",
            ("endpoint", "from_model", "to_model", "feature"),
        )
        self.transitions_opened = counter(
            "driftmon_transitions_opened", "Model transitions opened on endpoints."
        )
        self.transitions_refused = counter(
            "driftmon_transitions_refused",
            "Model changes not tracked as transitions, by reason (limit: "
            "limits.max_transitions reached; no_baseline: the previous version served "
            "fewer than transitions.min_events events).",
            ("reason",),
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
        for reason in ("not_inference", "duplicate"):
            self.input_skipped.labels(reason)
        for reason in ("limit", "no_baseline"):
            self.transitions_refused.labels(reason)

    def remove_key(
        self, endpoint: str, model: str, features: Iterable[str], detectors: Iterable[str]
    ) -> None:
        """Drop a key's drift series (drift flag, last detection time, detection counts)
        for the features and detectors that had them: the key was evicted or its
        partition dropped. Its other series leave with the next KeySeries snapshot."""
        detectors = list(detectors)
        for feature in features:
            _remove(self.drift_active, endpoint, model, feature)
            _remove(self.input_drift_active, endpoint, model, feature)
            _remove(self.last_detection_timestamp, endpoint, model, feature)
            for detector in detectors:
                _remove(self.drift_detections, endpoint, model, feature, detector)

    def remove_transition(
        self,
        endpoint: str,
        from_model: str,
        to_model: str,
        features: Iterable[str],
        *,
        verdicts: bool = True,
    ) -> None:
        """Drop a transition's effect series for ``features`` and (``verdicts``) its
        verdict series: it is no longer listed by any partition of this process."""
        if verdicts:
            for verdict in TRANSITION_VERDICTS:
                _remove(self.transition_verdict, endpoint, from_model, to_model, verdict)
        for feature in features:
            _remove(self.transition_effect, endpoint, from_model, to_model, feature)

    def remove_partition_lag(self, topic: str, partition: int | str) -> None:
        """Drop the lag series of a partition this consumer no longer owns."""
        _remove(self.consumer_lag, topic, str(partition))


def _remove(metric: Counter | Gauge, *labelvalues: str) -> None:
    # Older prometheus_client versions raise KeyError for a series that was never created.
    with suppress(KeyError):
        metric.remove(*labelvalues)
