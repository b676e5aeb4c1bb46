from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from driftmon.alertmanager import AlertSender, error_kind, rfc3339, safe_url, ssl_context
from driftmon.core.monitor import detection_id
from driftmon.metrics import Metrics
from driftmon.settings import AlertmanagerSettings

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
needs_alertmanager = pytest.mark.skipif(
    shutil.which(ALERTMANAGER) is None,
    reason=f"{ALERTMANAGER} not installed: apt-get install prometheus-alertmanager",
)
FAST = {"initial_backoff": 0.02, "max_backoff": 0.2}
DETECTION: dict[str, Any] = {
    "detector": "page_hinkley",
    "baseline": 412.3,  # display units (characters here), as the monitor's detections carry
    "current": 1030.4,
    "key_events": 5120,
    "events_since_onset": 120,
    "detected_at": 1_700_000_000.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


class Clock:
    def __init__(self, now: float = 1_700_000_100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, version="test")


def sent(registry: CollectorRegistry, status: str) -> float:
    value = registry.get_sample_value("driftmon_alerts_sent_total", {"status": status})
    return 0.0 if value is None else value


def failures(registry: CollectorRegistry, url: str, error: str) -> float:
    labels = {"url": url, "error": error}
    value = registry.get_sample_value("driftmon_alert_send_failures_total", labels)
    return 0.0 if value is None else value


def undelivered(registry: CollectorRegistry, url: str) -> float | None:
    return registry.get_sample_value("driftmon_alerts_undelivered", {"url": url})


@contextlib.contextmanager
def sender(
    settings: AlertmanagerSettings, metrics: Metrics | None, **kwargs: Any
) -> Iterator[AlertSender]:
    alerts = AlertSender(settings, metrics, **{**FAST, **kwargs})
    try:
        yield alerts
    finally:
        alerts.close(2.0)


# --- a tiny stdlib HTTP server standing in for Alertmanager -------------------------------


class Recorder:
    """Records POSTs; answers with the queued statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.lock = threading.Lock()

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append((headers, json.loads(body)))
            return self.statuses.pop(0) if self.statuses else 200

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


@contextlib.contextmanager
def recording_server(recorder: Recorder) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/api/v2/alerts"
            status = recorder.handle(dict(self.headers), body)
            reply = b"" if status == 200 else b"bad alert"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --- payloads, retries, queue ---------------------------------------------------------------


def test_payload_labels_annotations_and_times(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    recorder = Recorder()
    clock = Clock()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(
            urls=[url],
            static_labels={"team": "ml", "endpoint": "ignored"},
            severity={"refusal": "critical"},
            generator_url="https://grafana.example/d/drift",
            resend_interval_seconds=30,
        )
        with sender(settings, metrics, clock=clock) as alerts:
            alerts.fire("support-chat", "gpt-4o", "output_chars", **DETECTION)
            alerts.fire("support-chat", "gpt-4o", "refusal", **DETECTION)
            wait_for(lambda: sum(len(body) for _, body in recorder.requests) == 2)
    headers, _ = recorder.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    by_feature = {a["labels"]["feature"]: a for _, body in recorder.requests for a in body}
    chars = by_feature["output_chars"]
    assert chars["labels"] == {
        "alertname": "LLMOutputDrift",
        "endpoint": "support-chat",
        "model": "gpt-4o",
        "feature": "output_chars",
        "severity": "warning",
        "team": "ml",
    }
    assert chars["annotations"] == {
        "summary": "output_chars drifted on support-chat / gpt-4o",
        "description": "output_chars: typical 412 characters → 1,030 characters "
        "(page_hinkley, 120 events since onset, detected at event 5,120 of this key)",
        "detected_at": "2023-11-14T22:13:20.000Z",
        "detection_id": detection_id(
            "support-chat", "gpt-4o", "output_chars", "page_hinkley", 5120
        ),
    }
    assert chars["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert chars["endsAt"] == rfc3339(clock.now + 4 * 30)
    assert chars["generatorURL"] == "https://grafana.example/d/drift"
    assert by_feature["refusal"]["labels"]["severity"] == "critical"
    assert sent(registry, "ok") == 2


def test_description_says_how_long_the_change_has_run_where_the_detector_estimates_it() -> None:
    def description(feature: str, onset: int | None) -> str:
        alerts = AlertSender(AlertmanagerSettings(), None)
        alerts.fire("chat", "m1", feature, **{**DETECTION, "events_since_onset": onset})
        return alerts._firing[("chat", "m1", feature)].annotations["description"]

    assert description("embedding_distance", 40).endswith(
        "(page_hinkley, 40 sampled outputs since onset, detected at event 5,120 of this key)"
    )
    assert description("embedding", None).endswith(
        "(page_hinkley, detected at event 5,120 of this key)"
    )


@pytest.mark.parametrize(
    ("feature", "baseline", "current", "expected"),
    [
        ("output_tokens", 96.4, 311.0, "output_tokens: typical 96 tokens → 311 tokens"),
        ("latency", 812.0, 2440.0, "latency: typical 812 ms → 2,440 ms"),
        ("paragraphs", 2.0, 5.04, "paragraphs: typical 2.0 paragraphs → 5.0 paragraphs"),
        ("refusal", 2.0, 9.53, "refusal: rate 2.0 % → 9.5 %"),
        ("must_cite_source", 99.0, 71.25, "must_cite_source: rate 99.0 % → 71.2 %"),
        ("sentence_words", 14.2, 21.75, "sentence_words: mean 14.2 words → 21.8 words"),
        ("feedback", 0.42, -0.1, "feedback: mean 0.42 score → -0.1 score"),
        ("embedding_distance", 0.84, 1.32, "embedding_distance: typical 0.84 distance → 1.32"),
        ("embedding", 30.25, 52.1, "embedding: statistic 52.1 over threshold 30.2"),
    ],
)
def test_description_speaks_the_features_own_units(
    feature: str, baseline: float, current: float, expected: str
) -> None:
    alerts = AlertSender(AlertmanagerSettings(), None)
    detection = {**DETECTION, "baseline": baseline, "current": current}
    alerts.fire("chat", "m1", feature, **detection)
    description = alerts._firing[("chat", "m1", feature)].annotations["description"]
    assert description.startswith(expected), description


def test_detection_time_in_the_future_is_clamped(metrics: Metrics) -> None:
    recorder = Recorder()
    clock = Clock()
    with (
        recording_server(recorder) as url,
        sender(AlertmanagerSettings(urls=[url]), metrics, clock=clock) as alerts,
    ):
        future = {**DETECTION, "detected_at": clock.now + 3600}
        alerts.fire("chat", "m1", "output_chars", **future)
        alerts.resolve("chat", "m1", "output_chars")
        wait_for(
            lambda: any(
                a["endsAt"]
                for _, body in recorder.requests
                for a in body
                if a["startsAt"] == a["endsAt"]
            )
        )
    last = recorder.requests[-1][1][-1]
    assert last["startsAt"] == last["endsAt"] == rfc3339(clock.now)
    assert last["annotations"]["detected_at"] == rfc3339(clock.now + 3600)


def test_4xx_is_counted_rejected_and_not_retried(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    recorder = Recorder(statuses=[400])
    with recording_server(recorder) as url:
        with sender(AlertmanagerSettings(urls=[url]), metrics) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: sent(registry, "rejected") == 1)
            time.sleep(0.3)
            # A failed attempt, and nothing owed: it will never be accepted.
            assert failures(registry, url.rstrip("/"), "http_4xx") == 1
            assert undelivered(registry, url.rstrip("/")) == 0
        assert recorder.count() == 1
    assert sent(registry, "ok") == sent(registry, "error") == 0


def test_5xx_is_retried_with_backoff(registry: CollectorRegistry, metrics: Metrics) -> None:
    recorder = Recorder(statuses=[500, 503])
    with (
        recording_server(recorder) as url,
        sender(AlertmanagerSettings(urls=[url], max_retries=3), metrics) as alerts,
    ):
        alerts.fire("chat", "m1", "output_chars", **DETECTION)
        wait_for(lambda: sent(registry, "ok") == 1)
        label = url.rstrip("/")
        assert failures(registry, label, "http_5xx") == 2  # each attempt, before the last
        assert undelivered(registry, label) == 0
    assert recorder.count() == 3
    assert sent(registry, "error") == 0


def test_gives_up_after_max_retries_and_counts_error(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with sender(AlertmanagerSettings(urls=[url], max_retries=2), metrics) as alerts:
        alerts.fire("chat", "m1", "output_chars", **DETECTION)
        wait_for(lambda: sent(registry, "error") == 1)
        assert alerts.active() == {("chat", "m1", "output_chars")}


def test_failures_log_one_warning_per_batch(registry: CollectorRegistry, metrics: Metrics) -> None:
    recorder = Recorder(statuses=[422])
    with structlog.testing.capture_logs() as logs:
        with (
            recording_server(recorder) as url,
            sender(AlertmanagerSettings(urls=[url]), metrics) as alerts,
        ):
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: sent(registry, "rejected") == 1)
        down = f"http://127.0.0.1:{free_port()}"
        with sender(AlertmanagerSettings(urls=[down], max_retries=2), metrics) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: sent(registry, "error") == 1)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["event"], w.get("alerts")) for w in warnings] == [
        ("alertmanager rejected alerts", 1),
        ("alertmanager send failing; retrying", None),  # at once: the first failed attempt
        ("alertmanager unreachable; alerts kept for the next resend", 1),
    ]
    assert warnings[0]["status"] == 422
    assert warnings[0]["response"] == "bad alert"
    assert (warnings[1]["url"], warnings[1]["error_type"]) == (down, "connection")
    assert warnings[2]["attempts"] == 3


def test_a_failing_url_logs_at_once_then_once_per_interval(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    settings = AlertmanagerSettings(urls=[down], max_retries=1000)
    with (
        structlog.testing.capture_logs() as logs,
        sender(
            settings, metrics, initial_backoff=0.02, max_backoff=0.02, failure_log_interval=0.5
        ) as alerts,
    ):
        alerts.fire("chat", "m1", "output_chars", **DETECTION)
        wait_for(lambda: failures(registry, down, "connection") >= 1)
        first = [e for e in logs if e["log_level"] == "warning"]  # logged before retrying
        assert [e["event"] for e in first] == ["alertmanager send failing; retrying"]
        wait_for(lambda: any(e["event"] == "alertmanager still failing" for e in logs))
        wait_for(lambda: failures(registry, down, "connection") >= 40)
        attempts = failures(registry, down, "connection")
        logged = [e for e in logs if e["log_level"] == "warning"]
        assert sent(registry, "error") == 0  # retries not spent: the outage showed before
    still = [e for e in logged if e["event"] == "alertmanager still failing"]
    # Rate-limited: far fewer lines than failed attempts, and each says how many it covers.
    assert len(logged) == 1 + len(still) and len(logged) < attempts / 4
    assert sum(e["failures"] for e in still) <= attempts - 1
    assert all(e["url"] == down and e["error_type"] == "connection" for e in logged)
    assert all(e["undelivered"] == 1 for e in still)


def test_timeouts_are_counted_as_timeouts(registry: CollectorRegistry, metrics: Metrics) -> None:
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        settings = AlertmanagerSettings(urls=[url], timeout_seconds=0.2, max_retries=1000)
        with sender(settings, metrics) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: failures(registry, url, "timeout") >= 2)
            assert undelivered(registry, url) == 1
            assert failures(registry, url, "connection") == 0


def test_error_kinds_are_a_small_bounded_set() -> None:
    refused = urllib.error.URLError(ConnectionRefusedError(111, "refused"))
    assert error_kind(refused) == "connection"
    assert error_kind(urllib.error.URLError(socket.gaierror(-2, "unknown host"))) == "connection"
    assert error_kind(urllib.error.URLError(TimeoutError("timed out"))) == "timeout"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(urllib.error.URLError(ssl.SSLCertVerificationError(1, "bad"))) == "tls"
    assert error_kind(http.client.RemoteDisconnected("closed")) == "connection"
    assert error_kind(http.client.BadStatusLine("garbage")) == "protocol"
    for code, kind in ((400, "http_4xx"), (429, "http_4xx"), (502, "http_5xx")):
        assert error_kind(urllib.error.HTTPError("http://x", code, "", Message(), None)) == kind


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("http://alertmanager:9093", "http://alertmanager:9093"),
        ("https://am.example/prefix/", "https://am.example/prefix"),
        ("https://drift:s3cret@am.example:9443/?token=abc#x", "https://am.example:9443"),
        ("http://[::1]:9093/", "http://[::1]:9093"),
    ],
)
def test_url_label_has_no_credentials_or_query(url: str, label: str) -> None:
    assert safe_url(url) == label


def test_undelivered_gauge_counts_alerts_not_yet_accepted(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    clock = Clock()
    settings = AlertmanagerSettings(urls=[down], max_retries=0, resend_interval_seconds=60)
    with sender(settings, metrics, clock=clock) as alerts:
        assert undelivered(registry, down) == 0  # exported from the start
        alerts.fire("chat", "m1", "output_chars", **DETECTION)
        alerts.fire("chat", "m1", "refusal", **DETECTION)
        wait_for(lambda: sent(registry, "error") == 2)
        # Retries spent: still owed until the next resend delivers them.
        assert undelivered(registry, down) == 2
        alerts.forget("chat", "m1", "refusal")  # no longer ours to send
        assert undelivered(registry, down) == 1
        alerts.resolve("chat", "m1", "output_chars")  # the resolve is owed now
        wait_for(lambda: sent(registry, "error") == 3)
        assert undelivered(registry, down) == 1


def test_basic_auth_header_is_sent(metrics: Metrics) -> None:
    recorder = Recorder()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(urls=[url], username="drift", password=SecretStr("s3cr:t"))
        with sender(settings, metrics) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: recorder.count() == 1)
    headers, _ = recorder.requests[0]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"drift:s3cr:t").decode()


def test_bearer_token_file_is_sent(metrics: Metrics, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    recorder = Recorder()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(urls=[url], bearer_token_file=token_file)
        with sender(settings, metrics) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: recorder.count() == 1)
    assert recorder.requests[0][0]["Authorization"] == "Bearer tok-123"


def test_queue_overflow_drops_oldest_and_counts(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    settings = AlertmanagerSettings(urls=[url], queue_size=2, max_retries=100)
    with sender(settings, metrics, initial_backoff=10.0, max_backoff=10.0) as alerts:
        alerts.fire("chat", "m1", "f0", **DETECTION)
        wait_for(lambda: alerts.queued() == 0)  # the sender thread is now stuck retrying f0
        for feature in ("f1", "f2", "f3"):
            alerts.fire("chat", "m1", feature, **DETECTION)
        alerts.fire("chat", "m1", "f3", **DETECTION)  # already queued: replaced, not dropped
        assert alerts.queued() == 2
        assert registry.get_sample_value("driftmon_alert_queue_dropped_total") == 1
        assert len(alerts.active()) == 4


def test_fire_and_resolve_never_block_on_a_hung_alertmanager(metrics: Metrics) -> None:
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        settings = AlertmanagerSettings(urls=[url], timeout_seconds=30, queue_size=50)
        alerts = AlertSender(settings, metrics, initial_backoff=0.02, max_backoff=0.2)
        started = time.monotonic()
        for i in range(200):
            alerts.fire("chat", "m1", f"f{i}", **DETECTION)
            alerts.resolve("chat", "m1", f"f{i}")
            alerts.tick()
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        alerts.close(0.5)
        assert time.monotonic() - started < 2.0


def test_a_hung_alertmanager_does_not_delay_the_others(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    # Two replicas of one HA Alertmanager, one of them hung: each URL has its own sender.
    recorder = Recorder()
    with socket.socket() as hung, recording_server(recorder) as live:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        urls = [f"http://127.0.0.1:{hung.getsockname()[1]}", live]
        settings = AlertmanagerSettings(urls=urls, timeout_seconds=30, max_retries=5)
        with sender(settings, metrics) as alerts:
            started = time.monotonic()
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: recorder.count() == 1, timeout=5)
            assert time.monotonic() - started < 5  # not behind the hung URL's 30 s timeout
            alerts.fire("chat", "m1", "refusal", **DETECTION)
            wait_for(lambda: recorder.count() == 2, timeout=5)
            assert sent(registry, "ok") == 2
            assert sent(registry, "error") == 0  # the hung one is still in its first attempt
    assert [a["labels"]["feature"] for _, body in recorder.requests for a in body] == [
        "output_chars",
        "refusal",
    ]


def test_a_resolve_is_resent_only_where_it_was_not_delivered(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    flaky = Recorder(statuses=[200, 503])  # takes the firing alert, fails the resolve once
    steady = Recorder()
    clock = Clock()
    with recording_server(flaky) as flaky_url, recording_server(steady) as steady_url:
        settings = AlertmanagerSettings(
            urls=[flaky_url, steady_url], max_retries=0, resend_interval_seconds=60
        )
        with sender(settings, metrics, clock=clock) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: flaky.count() == steady.count() == 1)
            alerts.resolve("chat", "m1", "output_chars")
            resolved_at = clock.now
            wait_for(lambda: flaky.count() == steady.count() == 2)
            wait_for(lambda: sent(registry, "error") == 1)
            clock.now += 60
            alerts.tick()  # re-sent to the flaky URL only
            wait_for(lambda: flaky.count() == 3)
            clock.now += 60
            alerts.tick()  # delivered everywhere: nothing left to send
            time.sleep(0.3)
    assert (flaky.count(), steady.count()) == (3, 2)
    for recorder in (flaky, steady):
        (last,) = recorder.requests[-1][1]
        assert last["endsAt"] == rfc3339(resolved_at)


def test_firing_alerts_are_resent_each_interval(metrics: Metrics) -> None:
    recorder = Recorder()
    clock = Clock()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(urls=[url], resend_interval_seconds=60)
        with sender(settings, metrics, clock=clock) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: recorder.count() == 1)
            clock.now += 59
            alerts.tick()
            time.sleep(0.2)
            assert recorder.count() == 1
            clock.now += 1
            alerts.tick()
            wait_for(lambda: recorder.count() == 2)
    (resent,) = recorder.requests[1][1]
    assert resent["endsAt"] == rfc3339(clock.now + 4 * 60)
    assert resent["startsAt"] == rfc3339(DETECTION["detected_at"])


def test_a_forgotten_alert_is_neither_resent_nor_resolved(metrics: Metrics) -> None:
    # Its partition moved away: the last endsAt lets Alertmanager expire it.
    recorder = Recorder()
    clock = Clock()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(urls=[url], resend_interval_seconds=60)
        with sender(settings, metrics, clock=clock) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            alerts.fire("chat", "m1", "refusal", **DETECTION)
            wait_for(lambda: sum(len(body) for _, body in recorder.requests) == 2)
            alerts.forget("chat", "m1", "output_chars")
            assert alerts.active() == {("chat", "m1", "refusal")}
            alerts.resolve("chat", "m1", "output_chars")  # no longer ours: a no-op
            clock.now += 60
            alerts.tick()
            wait_for(lambda: recorder.count() >= 2)
            time.sleep(0.2)
    later = [alert for _, body in recorder.requests[1:] for alert in body]
    assert [a["labels"]["feature"] for a in later] == ["refusal"]
    assert later[0]["endsAt"] == rfc3339(clock.now + 4 * 60)


def test_undelivered_resolve_is_kept_until_delivered(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    recorder = Recorder(statuses=[200, 503])  # the first resolve attempt fails
    clock = Clock()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(urls=[url], max_retries=0, resend_interval_seconds=60)
        with sender(settings, metrics, clock=clock) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: recorder.count() == 1)
            alerts.resolve("chat", "m1", "output_chars")
            resolved_at = clock.now
            wait_for(lambda: sent(registry, "error") == 1)
            assert alerts.active() == set()
            clock.now += 60
            alerts.tick()
            wait_for(lambda: sent(registry, "ok") == 2)
            clock.now += 60
            alerts.tick()  # delivered: nothing left to send
            time.sleep(0.2)
    assert recorder.count() == 3
    (retried,) = recorder.requests[2][1]
    assert retried["endsAt"] == rfc3339(resolved_at)


def test_close_flushes_queued_alerts(metrics: Metrics) -> None:
    recorder = Recorder()
    with recording_server(recorder) as url:
        alerts = AlertSender(AlertmanagerSettings(urls=[url]), metrics)
        alerts.fire("chat", "m1", "output_chars", **DETECTION)
        alerts.resolve("chat", "m1", "output_chars")
        alerts.fire("chat", "m1", "refusal", **DETECTION)
        alerts.close(5.0)
        delivered = {
            (a["labels"]["feature"], a["endsAt"]) for _, body in recorder.requests for a in body
        }
    assert {feature for feature, _ in delivered} == {"output_chars", "refusal"}


def test_without_urls_state_is_kept_and_nothing_is_sent() -> None:
    alerts = AlertSender(AlertmanagerSettings(), None)
    alerts.fire("chat", "m1", "output_chars", **DETECTION)
    alerts.tick()
    assert alerts.active() == {("chat", "m1", "output_chars")}
    assert alerts.queued() == 0
    alerts.resolve("chat", "m1", "output_chars")
    alerts.resolve("chat", "m1", "never-fired")
    assert alerts.active() == set()
    alerts.close(0.1)


def test_url_without_scheme_fails_at_start_up() -> None:
    # Rejected when the settings load (exit 2, like every configuration error) ...
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        AlertmanagerSettings(urls=["alertmanager:9093"])
    # ... and by the sender itself for settings built without validation.
    unchecked = AlertmanagerSettings.model_construct(urls=["alertmanager:9093"])
    with pytest.raises(ValueError, match=r"alertmanager\.urls"):
        AlertSender(unchecked, None)


def test_tls_settings_build_the_ssl_context(tmp_path: Path) -> None:
    unverified = ssl_context(AlertmanagerSettings(tls_verify=False))
    assert unverified.verify_mode == ssl.CERT_NONE
    assert not unverified.check_hostname
    verified = ssl_context(AlertmanagerSettings())
    assert verified.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(OSError):
        ssl_context(AlertmanagerSettings(ca_file=tmp_path / "missing.pem"))


# --- against a real Alertmanager -----------------------------------------------------------

AM_CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


@contextlib.contextmanager
def run_alertmanager(workdir: Path, port: int) -> Iterator[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "alertmanager.yml"
    config.write_text(AM_CONFIG)
    base = f"http://127.0.0.1:{port}"
    with (workdir / "alertmanager.log").open("wb") as logfile:
        process = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: _ready(base) or process.poll() is not None, timeout=20)
            if process.poll() is not None:
                log = (workdir / "alertmanager.log").read_text()
                raise RuntimeError(f"alertmanager exited early:\n{log}")
            yield base
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    with run_alertmanager(tmp_path / "am", free_port()) as base:
        yield base


def am_alerts(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(base + "/api/v2/alerts?active=true", timeout=5) as response:
        alerts: list[dict[str, Any]] = json.load(response)
        return alerts


def test_an_input_drift_fires_llm_input_drift_and_a_model_drift_replaces_it(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    recorder = Recorder()
    clock = Clock()
    with recording_server(recorder) as url:
        settings = AlertmanagerSettings(urls=[url], severity={"output_chars": "critical"})
        with sender(settings, metrics, clock=clock) as alerts:
            alerts.fire("chat", "m1", "output_chars", **DETECTION, kind="input_drift")
            wait_for(lambda: len(recorder.requests) == 1)
            clock.now += 60
            # The model drifts too: the input-drift alert resolves, LLMOutputDrift fires.
            alerts.fire("chat", "m1", "output_chars", **DETECTION)
            wait_for(lambda: sum(len(body) for _, body in recorder.requests) == 3)
    sent_alerts = [a for _, body in recorder.requests for a in body]
    first, *rest = sent_alerts
    assert first["labels"]["alertname"] == "LLMInputDrift"
    assert first["labels"]["severity"] == "info"  # alertmanager.input_drift_severity
    assert first["annotations"]["summary"].endswith("(explained by a change of inputs)")
    by_name = {a["labels"]["alertname"]: a for a in rest}
    assert by_name["LLMInputDrift"]["endsAt"] == rfc3339(clock.now)  # resolved
    assert by_name["LLMOutputDrift"]["labels"]["severity"] == "critical"
    assert "endsAt" not in by_name["LLMOutputDrift"] or by_name["LLMOutputDrift"][
        "endsAt"
    ] > rfc3339(clock.now)


@pytest.mark.integration
@needs_alertmanager
def test_fired_alert_shows_up_in_alertmanager(alertmanager: str, metrics: Metrics) -> None:
    settings = AlertmanagerSettings(urls=[alertmanager], static_labels={"team": "ml"})
    detected_at = time.time() - 5
    with sender(settings, metrics) as alerts:
        alerts.fire(
            "support-chat", "gpt-4o", "output_chars", **{**DETECTION, "detected_at": detected_at}
        )
        wait_for(lambda: len(am_alerts(alertmanager)) == 1)
    (alert,) = am_alerts(alertmanager)
    assert alert["labels"] == {
        "alertname": "LLMOutputDrift",
        "endpoint": "support-chat",
        "model": "gpt-4o",
        "feature": "output_chars",
        "severity": "warning",
        "team": "ml",
    }
    assert alert["annotations"]["summary"] == "output_chars drifted on support-chat / gpt-4o"
    assert alert["annotations"]["description"].startswith(
        "output_chars: typical 412 characters → 1,030 characters (page_hinkley, "
    )
    assert alert["annotations"]["detected_at"] == rfc3339(detected_at)
    assert alert["annotations"]["detection_id"] == detection_id(
        "support-chat", "gpt-4o", "output_chars", "page_hinkley", DETECTION["key_events"]
    )
    assert alert["status"]["state"] in ("active", "unprocessed")


@pytest.mark.integration
@needs_alertmanager
def test_resolved_alert_leaves_the_active_alerts(alertmanager: str, metrics: Metrics) -> None:
    with sender(AlertmanagerSettings(urls=[alertmanager]), metrics) as alerts:
        alerts.fire("chat", "m1", "output_chars", **{**DETECTION, "detected_at": time.time()})
        alerts.fire("chat", "m1", "refusal", **{**DETECTION, "detected_at": time.time()})
        wait_for(lambda: len(am_alerts(alertmanager)) == 2)
        alerts.resolve("chat", "m1", "output_chars")
        wait_for(lambda: [a["labels"]["feature"] for a in am_alerts(alertmanager)] == ["refusal"])


@pytest.mark.integration
@needs_alertmanager
def test_both_replicas_get_the_alert_while_one_comes_up_late(
    tmp_path: Path, registry: CollectorRegistry, metrics: Metrics
) -> None:
    late_port = free_port()
    with run_alertmanager(tmp_path / "am-a", free_port()) as up:
        settings = AlertmanagerSettings(
            urls=[f"http://127.0.0.1:{late_port}", up], max_retries=1000
        )
        with sender(settings, metrics, initial_backoff=0.1, max_backoff=0.5) as alerts:
            alerts.fire("chat", "m1", "output_chars", **{**DETECTION, "detected_at": time.time()})
            wait_for(lambda: len(am_alerts(up)) == 1, timeout=10)
            with run_alertmanager(tmp_path / "am-b", late_port) as late:
                wait_for(lambda: len(am_alerts(late)) == 1, timeout=20)
                alerts.resolve("chat", "m1", "output_chars")
                wait_for(lambda: am_alerts(up) == am_alerts(late) == [], timeout=20)


@pytest.mark.integration
@needs_alertmanager
def test_alert_fired_while_alertmanager_is_down_arrives_when_it_comes_up(
    tmp_path: Path, registry: CollectorRegistry, metrics: Metrics
) -> None:
    port = free_port()
    settings = AlertmanagerSettings(urls=[f"http://127.0.0.1:{port}"], max_retries=1000)
    with sender(settings, metrics, initial_backoff=0.1, max_backoff=0.5) as alerts:
        alerts.fire("chat", "m1", "output_chars", **{**DETECTION, "detected_at": time.time()})
        time.sleep(0.5)
        assert sent(registry, "ok") == 0
        with run_alertmanager(tmp_path / "am", port) as base:
            wait_for(lambda: len(am_alerts(base)) == 1, timeout=20)
            assert am_alerts(base)[0]["labels"]["feature"] == "output_chars"
            assert sent(registry, "ok") == 1


@pytest.mark.integration
@needs_alertmanager
def test_an_outage_shows_at_once_and_clears_when_alertmanager_accepts(
    tmp_path: Path, registry: CollectorRegistry, metrics: Metrics
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = AlertmanagerSettings(urls=[url], max_retries=1000)
    with (
        structlog.testing.capture_logs() as logs,
        sender(settings, metrics, initial_backoff=0.2, max_backoff=0.5) as alerts,
    ):
        started = time.monotonic()
        alerts.fire("chat", "m1", "output_chars", **{**DETECTION, "detected_at": time.time()})
        alerts.fire("chat", "m1", "refusal", **{**DETECTION, "detected_at": time.time()})
        # The first failed attempt counts, far before 1 000 retries are spent.
        wait_for(lambda: failures(registry, url, "connection") >= 1, timeout=10)
        assert sent(registry, "error") == 0
        assert undelivered(registry, url) == 2
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [(e["event"], e["url"], e["error_type"]) for e in warnings] == [
            ("alertmanager send failing; retrying", url, "connection")
        ]
        print(f"first failure visible after {time.monotonic() - started:.3f} s")
        wait_for(lambda: failures(registry, url, "connection") >= 3, timeout=10)
        assert undelivered(registry, url) == 2
        with run_alertmanager(tmp_path / "am", port) as base:
            wait_for(lambda: len(am_alerts(base)) == 2, timeout=20)
            wait_for(lambda: undelivered(registry, url) == 0, timeout=5)
            (recovered,) = [e for e in logs if e["event"] == "alertmanager reachable again"]
            assert recovered["url"] == url and recovered["failures"] >= 3
            assert recovered["log_level"] == "info"
            by_feature = {a["labels"]["feature"]: a for a in am_alerts(base)}
            description = by_feature["output_chars"]["annotations"]["description"]
            assert "typical 412 characters → 1,030 characters" in description


@pytest.mark.integration
@needs_alertmanager
def test_another_kind_of_alert_lives_beside_the_drift_alerts(
    alertmanager: str, metrics: Metrics
) -> None:
    """fire_alert/resolve_alert (the LLMModelTransition alert's path): own labels, a key
    of another length that never meets a drift's, the same queue and resolve."""
    transition = ("LLMModelTransition", "chat", "m1", "m2", "warning")
    labels = {"alertname": "LLMModelTransition", "endpoint": "chat", "from_model": "m1"}
    with sender(AlertmanagerSettings(urls=[alertmanager]), metrics) as alerts:
        alerts.fire("chat", "m1", "output_chars", **{**DETECTION, "detected_at": time.time()})
        alerts.fire_alert(transition, labels, {"summary": "m1 → m2"}, time.time())
        wait_for(lambda: len(am_alerts(alertmanager)) == 2)
        assert alerts.active() == {("chat", "m1", "output_chars"), transition}
        alerts.resolve_alert(transition)
        wait_for(
            lambda: (
                [a["labels"]["alertname"] for a in am_alerts(alertmanager)] == ["LLMOutputDrift"]
            )
        )
        assert alerts.active() == {("chat", "m1", "output_chars")}
