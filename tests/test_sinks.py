"""Sinks: the interface, the wiring from settings, and the webhook sink against a real
local HTTP server (http.server in a thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from driftmon.alertmanager import AlertSender
from driftmon.core.drifts import ActiveDrift
from driftmon.core.monitor import Detection
from driftmon.metrics import Metrics
from driftmon.settings import AlertmanagerSettings, Settings, WebhookSettings
from driftmon.sinks import CallbackSink, Origin, Sink, Sinks, build_sinks
from driftmon.sinks.alertmanager import AlertmanagerSink
from driftmon.sinks.webhook import WebhookSink
from tests.support import wait_for

DETECTION = Detection(
    endpoint="chat",
    model="m1",
    feature="output_chars",
    detector="adwin",
    baseline=412.0,
    current=1030.0,
    statistic=9.5,
    threshold=4.2,
    key_events=5120,
    timestamp=1_700_000_000.0,
    event_index=6123,
    events_since_onset=120,
)
DRIFT = ActiveDrift.from_detection(DETECTION, detected_at=1_700_000_000.0, since=5.0)
ORIGIN = Origin("llm-outputs", 3, 6123)
SECRET_PATH = "/services/T000/B000/not-for-logs"


class Receiver:
    """A local HTTP endpoint: records each POST body, answers with ``statuses`` in turn
    (then 200), and holds every answer while ``hold`` is clear."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.paths: list[str] = []
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hold.wait(30)
                with receiver.got:
                    receiver.bodies.append(json.loads(body))
                    receiver.paths.append(self.path)
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.got.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int, timeout: float = 20.0) -> list[Any]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= n, timeout), self.bodies
            return list(self.bodies)

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def webhook(url: str, **options: Any) -> WebhookSink:
    return WebhookSink(WebhookSettings(url=url, **options), clock=lambda: 1_700_000_600.0)


def test_a_detection_and_a_resolution_are_posted_as_json(receiver: Receiver) -> None:
    sink = webhook(receiver.url)
    sink.add(DETECTION, ORIGIN)
    sink.resolve(DRIFT)
    sink.close(5)
    fired, resolved = receiver.wait(2)
    assert fired == {
        **DETECTION.report(),
        "status": "firing",
        "detected_at": "2023-11-14T22:13:20.000Z",
        "key_events": 5120,
        "events_since_onset": 120,
        "topic": "llm-outputs",
        "partition": 3,
        "offset": 6123,
    }
    assert resolved == {
        "status": "resolved",
        "endpoint": "chat",
        "model": "m1",
        "feature": "output_chars",
        "detector": "adwin",
        "baseline": 412.0,
        "current": 1030.0,
        "detected_at": "2023-11-14T22:13:20.000Z",
        "resolved_at": "2023-11-14T22:23:20.000Z",
    }
    assert receiver.paths == [SECRET_PATH, SECRET_PATH]
    assert sink.counts == {"ok": 2}


def test_slack_gets_its_incoming_webhook_body(receiver: Receiver) -> None:
    sink = webhook(receiver.url, slack=True)
    sink.add(DETECTION, ORIGIN)
    sink.resolve(DRIFT)
    sink.close(5)
    fired, resolved = receiver.wait(2)
    assert set(fired) == {"text"} and set(resolved) == {"text"}
    assert fired["text"].startswith("Drift: output_chars on chat / m1: ")
    assert "adwin" in fired["text"]
    assert resolved["text"] == "output_chars on chat / m1 is quiet again (adwin drift resolved)"


def test_an_unknown_value_is_posted_as_null(receiver: Receiver) -> None:
    sink = webhook(receiver.url)
    sink.resolve(ActiveDrift(**{**DRIFT.__dict__, "current": float("nan")}))
    sink.close(5)
    assert receiver.wait(1)[0]["current"] is None


def test_a_server_error_is_retried_and_counted(receiver: Receiver) -> None:
    receiver.statuses = [503]
    sink = webhook(receiver.url)
    sink.add(DETECTION, ORIGIN)
    bodies = receiver.wait(2)
    sink.close(5)
    assert bodies[0] == bodies[1]
    assert sink.counts == {"failed_attempts": 1, "ok": 1}


def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    sink = webhook(receiver.url)
    with capture_logs() as logs:
        sink.add(DETECTION, ORIGIN)
        sink.close(5)
    assert len(receiver.wait(1)) == 1
    assert sink.counts == {"failed_attempts": 1, "rejected": 1}
    assert [e["event"] for e in logs] == ["webhook rejected the post"]
    assert all(SECRET_PATH not in str(e) for e in logs)


def test_outcomes_reach_prometheus(receiver: Receiver) -> None:
    from prometheus_client import CollectorRegistry

    from driftmon.metrics import Metrics

    registry = CollectorRegistry()
    receiver.statuses = [400, 200]
    sink = WebhookSink(
        WebhookSettings(url=receiver.url), clock=lambda: 1_700_000_600.0, metrics=Metrics(registry)
    )
    sink.add(DETECTION, ORIGIN)
    sink.add(DETECTION, ORIGIN)
    sink.close(5)
    value = registry.get_sample_value
    assert value("driftmon_webhook_posts_total", {"outcome": "rejected"}) == 1
    assert value("driftmon_webhook_posts_total", {"outcome": "ok"}) == 1
    assert value("driftmon_webhook_posts_total", {"outcome": "failed_attempts"}) == 1


def test_an_unreachable_receiver_is_counted_and_never_logged_with_its_path() -> None:
    dead = Receiver()
    url = dead.url
    dead.close()  # nothing listens there any more
    sink = webhook(url, max_retries=1)
    with capture_logs() as logs:
        sink.add(DETECTION, ORIGIN)
        wait_for(lambda: sink.counts["error"], timeout=20, every=0.05)
        sink.close(1)
    assert sink.counts["failed_attempts"] == 2
    assert sink.counts["error"] == 1
    assert logs and all(SECRET_PATH not in str(e) for e in logs)
    assert sink.label == url.removesuffix(SECRET_PATH)


def test_a_full_queue_drops_new_posts_instead_of_blocking(receiver: Receiver) -> None:
    receiver.hold.clear()  # the receiver takes the first post and does not answer
    sink = webhook(receiver.url, queue_size=2)
    for _ in range(10):
        sink.add(DETECTION, ORIGIN)  # returns at once: the queue is bounded
    dropped = sink.counts["dropped"]
    assert 7 <= dropped <= 8  # one being posted (or about to be), two queued
    receiver.hold.set()
    sink.close(10)
    assert len(receiver.wait(10 - dropped)) == 10 - dropped
    assert sink.counts["ok"] == 10 - dropped


def test_close_counts_what_it_could_not_deliver(receiver: Receiver) -> None:
    receiver.hold.clear()
    sink = webhook(receiver.url, timeout_seconds=0.5, max_retries=0)
    for _ in range(3):
        sink.add(DETECTION, ORIGIN)
    with capture_logs() as logs:
        sink.close(0.2)
    assert sink.counts["dropped"] >= 2
    assert "webhook posts not delivered before shutdown" in [e["event"] for e in logs]


def test_build_sinks_wires_the_webhook_only_when_configured(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    alerts = AlertSender(AlertmanagerSettings(), metrics)
    live = CallbackSink()
    try:
        plain = build_sinks(Settings(), metrics, alerts=alerts, producer=lambda: None, live=live)
        names = [type(s).__name__ for s in plain.sinks]
        assert names == ["AlertmanagerSink", "DetectionTopicSink", "LogSink", "CallbackSink"]
        hooked = build_sinks(
            Settings(sinks={"webhook": {"url": "http://127.0.0.1:9/hook"}}),
            metrics,
            alerts=alerts,
            producer=lambda: None,
            live=live,
        )
        assert type(hooked.sinks[-1]).__name__ == "WebhookSink"
        hooked.sinks[-1].close(0.1)
    finally:
        alerts.close(1)


def test_the_alertmanager_sink_fires_resolves_and_forgets() -> None:
    alerts = AlertSender(AlertmanagerSettings(), None)
    sink = AlertmanagerSink(alerts)
    sink.fire(DRIFT)
    assert alerts.active() == {("chat", "m1", "output_chars")}
    sink.resolve(DRIFT)
    assert alerts.active() == set()
    sink.fire(DRIFT)
    sink.forget(DRIFT)
    assert alerts.active() == set()
    sink.close(1)


def test_sinks_are_called_in_order_and_a_sink_needs_only_what_it_uses() -> None:
    calls: list[str] = []

    class Recording(Sink):
        def __init__(self, name: str) -> None:
            self.name = name

        def add(self, detection: Detection, origin: Origin) -> None:
            calls.append(f"{self.name}.add@{origin.offset}")

        def flush(self) -> None:
            calls.append(f"{self.name}.flush")

    seen: list[Detection] = []
    sinks = Sinks([Recording("a"), CallbackSink(seen.append), Recording("b"), Sink()])
    sinks.fire(DRIFT)  # nobody here cares: the defaults do nothing
    sinks.add(DETECTION, ORIGIN)
    sinks.flush()
    sinks.resolve(DRIFT)
    sinks.forget(DRIFT)
    sinks.tick()
    sinks.close(1)
    assert calls == ["a.add@6123", "b.add@6123", "a.flush", "b.flush"]
    assert seen == [DETECTION]
