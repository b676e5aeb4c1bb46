from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from driftmon.metrics import Metrics, serve
from tests.support import SPEC_METRICS

SPEC_NAMES = [
    *SPEC_METRICS,
    "driftmon_alert_queue_dropped_total",
    "driftmon_checkpoints_total",
    "driftmon_build_info",
]

FEATURES = ["output_chars", "refusal"]
DETECTORS = ["page_hinkley", "adwin"]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, version="1.2.3")


def test_every_spec_metric_is_exposed_under_its_spec_name(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    _populate(metrics, "chat", "m1")
    metrics.key_series.publish(*_snapshot(("chat", "m1")))
    metrics.consumer_lag.labels("llm-outputs", "0").set(3)
    metrics.transition_verdict.labels("chat", "m1", "m2", "changed").set(1)
    metrics.input_drift_active.labels("chat", "m1", "refusal").set(1)
    exposed = {sample.name for family in registry.collect() for sample in family.samples}
    for name in SPEC_NAMES:
        assert name in exposed or f"{name}_count" in exposed, name
    assert not {name for name in exposed if not name.startswith("driftmon_")}


def test_labels_are_exactly_the_specs(registry: CollectorRegistry, metrics: Metrics) -> None:
    key = {"endpoint": "chat", "model": "m1"}
    feature = {**key, "feature": "output_chars"}
    detector = {**feature, "detector": "adwin"}
    metrics.key_series.publish(
        {("chat", "m1"): 2},
        {("chat", "m1", "output_chars"): (6.8, 6.5)},
        {("chat", "m1", "output_chars", "adwin"): (0.3, 1.5)},
    )
    metrics.events_rejected.labels(reason="not_json").inc()
    metrics.drift_active.labels(**feature).set(1)
    metrics.drift_detections.labels(**detector).inc()
    metrics.last_detection_timestamp.labels(**feature).set(1_700_000_000)
    metrics.consumer_lag.labels(topic="llm-outputs", partition="2").set(42)
    metrics.alerts_sent.labels(status="ok").inc()
    metrics.embedding_duration.observe(0.03)

    value = registry.get_sample_value
    assert value("driftmon_events_total", key) == 2
    assert value("driftmon_events_rejected_total", {"reason": "not_json"}) == 1
    assert value("driftmon_feature_value", feature) == 6.8
    assert value("driftmon_feature_baseline", feature) == 6.5
    assert value("driftmon_detector_statistic", detector) == 0.3
    assert value("driftmon_detector_threshold", detector) == 1.5
    assert value("driftmon_drift_active", feature) == 1
    assert value("driftmon_drift_detections_total", detector) == 1
    assert value("driftmon_last_detection_timestamp_seconds", feature) == 1_700_000_000
    assert value("driftmon_consumer_lag", {"topic": "llm-outputs", "partition": "2"}) == 42
    assert value("driftmon_alerts_sent_total", {"status": "ok"}) == 1
    assert value("driftmon_embedding_duration_seconds_count") == 1
    assert value("driftmon_embedding_duration_seconds_bucket", {"le": "0.05"}) == 1


def test_known_label_values_start_at_zero(registry: CollectorRegistry, metrics: Metrics) -> None:
    for reason in ("not_json", "not_object", "missing_field", "bad_type", "out_of_range"):
        assert registry.get_sample_value("driftmon_events_rejected_total", {"reason": reason}) == 0
    for status in ("ok", "error", "rejected"):
        assert registry.get_sample_value("driftmon_alerts_sent_total", {"status": status}) == 0
    assert registry.get_sample_value("driftmon_alert_queue_dropped_total") == 0
    assert registry.get_sample_value("driftmon_keys_evicted_total") == 0


def test_build_info(registry: CollectorRegistry, metrics: Metrics) -> None:
    from driftmon.core import compiled_label

    labels = {"version": "1.2.3", "compiled": compiled_label()}
    assert registry.get_sample_value("driftmon_build_info", labels) == 1


def test_build_info_defaults_to_a_version(registry: CollectorRegistry) -> None:
    Metrics(registry)
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("driftmon_build_info{"))
    assert 'version="' in line and 'compiled="' in line


def _populate(metrics: Metrics, endpoint: str, model: str) -> None:
    """Drift series of one key (labelled children)."""
    for feature in FEATURES:
        metrics.drift_active.labels(endpoint, model, feature).set(0)
        metrics.last_detection_timestamp.labels(endpoint, model, feature).set(1)
        for detector in DETECTORS:
            metrics.drift_detections.labels(endpoint, model, feature, detector).inc()


def _snapshot(*keys: tuple[str, str]) -> tuple[dict, dict, dict]:
    """A KeySeries snapshot of ``keys`` with every feature and detector."""
    return (
        dict.fromkeys(keys, 1.0),
        {(*k, f): (1.0, 1.0) for k in keys for f in FEATURES},
        {(*k, f, d): (1.0, 2.0) for k in keys for f in FEATURES for d in DETECTORS},
    )


def _series_of(registry: CollectorRegistry, endpoint: str, model: str) -> list[str]:
    return [
        f"{sample.name}{sample.labels}"
        for family in registry.collect()
        for sample in family.samples
        if sample.labels.get("endpoint") == endpoint and sample.labels.get("model") == model
    ]


def test_an_evicted_key_leaves_with_the_next_snapshot_and_remove_key(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    _populate(metrics, "chat", "m1")
    _populate(metrics, "chat", "m2")
    metrics.key_series.publish(*_snapshot(("chat", "m1"), ("chat", "m2")))
    names = {s.split("{")[0] for s in _series_of(registry, "chat", "m1")}
    assert {
        "driftmon_events_total",
        "driftmon_feature_value",
        "driftmon_feature_baseline",
        "driftmon_detector_statistic",
        "driftmon_detector_threshold",
        "driftmon_drift_active",
        "driftmon_drift_detections_total",
        "driftmon_last_detection_timestamp_seconds",
    } <= names
    others = _series_of(registry, "chat", "m2")

    metrics.key_series.publish(*_snapshot(("chat", "m2")))
    metrics.remove_key("chat", "m1", features=iter(FEATURES), detectors=iter(DETECTORS))

    assert _series_of(registry, "chat", "m1") == []
    assert _series_of(registry, "chat", "m2") == others


def test_pin_shows_a_value_and_baseline_before_the_next_snapshot(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    labels = {"endpoint": "chat", "model": "m1", "feature": "refusal"}
    metrics.key_series.pin(("chat", "m1", "refusal"), 12.5, None)
    assert registry.get_sample_value("driftmon_feature_value", labels) == 12.5
    metrics.key_series.pin(("chat", "m1", "refusal"), None, 2.0)
    assert registry.get_sample_value("driftmon_feature_value", labels) == 12.5
    assert registry.get_sample_value("driftmon_feature_baseline", labels) == 2.0
    metrics.key_series.publish({}, {}, {})
    assert registry.get_sample_value("driftmon_feature_value", labels) is None


def test_scrapes_while_snapshots_are_published_and_pinned(registry: CollectorRegistry) -> None:
    import threading

    metrics = Metrics(registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                generate_latest(registry)
        except BaseException as exc:  # reported below
            errors.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(300):
            keys = [(f"ep{j}", "m") for j in range(i, i + 50)]
            metrics.key_series.publish(*_snapshot(*keys))
            for j in range(20):
                metrics.key_series.pin((f"new{j}", "m", "refusal"), float(j), 0.0)
    finally:
        stop.set()
        scraper.join(10)
    assert errors == []
    text = generate_latest(registry).decode()
    assert 'driftmon_events_total{endpoint="ep299",model="m"} 1.0' in text
    assert 'endpoint="ep0"' not in text


def test_remove_key_ignores_series_never_created(metrics: Metrics) -> None:
    metrics.remove_key("chat", "m1", features=["embedding", "latency"], detectors=["mewma"])
    metrics.remove_key("never", "seen", features=FEATURES, detectors=DETECTORS)


def test_remove_partition_lag(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.consumer_lag.labels("t", "0").set(5)
    metrics.consumer_lag.labels("t", "1").set(7)
    metrics.remove_partition_lag("t", 0)
    metrics.remove_partition_lag("t", 9)
    assert (
        registry.get_sample_value("driftmon_consumer_lag", {"topic": "t", "partition": "0"}) is None
    )
    assert registry.get_sample_value("driftmon_consumer_lag", {"topic": "t", "partition": "1"}) == 7


class _Ready:
    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def served(registry: CollectorRegistry, metrics: Metrics) -> Iterator[tuple[str, _Ready]]:
    ready = _Ready()
    server, thread = serve(registry, "127.0.0.1", 0, ready)
    port = server.server_address[1]
    try:
        yield f"http://127.0.0.1:{port}", ready
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not thread.is_alive()


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_server_serves_metrics(served: tuple[str, _Ready], metrics: Metrics) -> None:
    base, _ = served
    metrics.key_series.publish({("chat", "m1"): 3.0}, {}, {})
    status, content_type, body = _get(base + "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    assert 'driftmon_events_total{endpoint="chat",model="m1"} 3.0' in body


def test_server_health_and_readiness(served: tuple[str, _Ready]) -> None:
    base, ready = served
    assert _get(base + "/healthz")[::2] == (200, "ok\n")
    assert _get(base + "/readyz")[0] == 503
    ready.value = True
    assert _get(base + "/readyz")[0] == 200
    assert _get(base + "/metrics?name[]=driftmon_keys")[0] == 200
    assert _get(base + "/nope")[0] == 404


def test_a_departing_keys_drift_series_go_with_it_and_only_its(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    # The MEWMA reports as feature "embedding", detector "mewma": not a FeatureStream, so
    # the daemon must remember which drift series a key has, or they outlive the key.
    from kafka import TopicPartition

    from driftmon.checkpoint import ActiveDrift
    from driftmon.daemon import Daemon
    from driftmon.settings import Settings

    settings = Settings(embeddings={"enabled": False}, state={"dir": str(tmp_path)})
    daemon = Daemon(settings, registry=registry)
    try:
        state = daemon._new_state()
        daemon.partitions[TopicPartition("t", 0)] = state
        for model, feature, detector in (
            ("m1", "embedding", "mewma"),
            ("m1", "refusal", "adwin"),
            ("m2", "refusal", "page_hinkley"),
        ):
            drift = ActiveDrift("chat", model, feature, detector, 1.0, 9.0, 400, 12, 0.0, 0.0)
            daemon.metrics.drift_detections.labels("chat", model, feature, detector).inc()
            daemon._activate(drift, state)
        text = generate_latest(registry).decode()
        assert 'feature="embedding"' in text and 'model="m2"' in text
        daemon.partitions.clear()  # the key is in no partition any more
        daemon._remove_key_series("chat", "m1")
        daemon._remove_key_series("never", "seen")  # no drift series: nothing to do
        text = generate_latest(registry).decode()
        # (value and baseline leave with the next KeySeries snapshot, not here)
        left = [x for x in text.splitlines() if 'model="m1"' in x and "_feature_" not in x]
        assert left == []
        assert 'driftmon_drift_active{endpoint="chat",feature="refusal",model="m2"} 1.0' in text
    finally:
        daemon.alerts.close(timeout=1)
