"""The webhook sink end to end: the daemon as a real process, a real broker, and a real
local HTTP receiver for the posts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.support import DaemonProcess, daemon_settings, produce, running, wait_for

pytestmark = pytest.mark.integration

TOPIC = "llm-outputs"
ENDPOINTS = {"sql-assistant": {"format": "json"}}
# Resolve as soon as the feature is quiet: warm-up plus one event, no minimum time.
FAST_RESOLVE = {"resolve_after_quiet_events": 1, "min_active_seconds": 0}


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    posts: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", posts
    server.shutdown()
    server.server_close()


def test_the_webhook_gets_each_detection_and_each_resolution(broker, tmp_path, receiver):
    url, posts = receiver
    lines = list(
        generate(8000, n_keys=4, seed=3, upgrade=Upgrade(endpoint="sql-assistant", at_event=4000))
    )
    produce(broker.bootstrap, TOPIC, lines)
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    offline = replay(
        [str(path)],
        Settings(endpoints=ENDPOINTS, embeddings={"enabled": False}, alertmanager=FAST_RESOLVE),
    )
    expected = sorted(
        (d.event_index, d.endpoint, d.feature, d.detector) for d in offline.detections
    )
    assert expected, "the upgrade must be detected"
    assert offline.resolutions, "and its drifts quiet again before the end"
    cfg = daemon_settings(
        broker.bootstrap,
        TOPIC,
        tmp_path / "state",
        "driftmon-test",
        ENDPOINTS,
        alertmanager=FAST_RESOLVE,
        sinks={"webhook": {"url": url}},
    )

    def firing() -> list[tuple[int, str, str, str]]:
        return sorted(
            (p["offset"], p["endpoint"], p["feature"], p["detector"])
            for p in list(posts)
            if p["status"] == "firing"
        )

    def resolved() -> set[tuple[str, str]]:
        return {(p["endpoint"], p["feature"]) for p in list(posts) if p["status"] == "resolved"}

    # The daemon checks every few seconds, so it may miss a resolution that a later
    # detection undid; it resolves every drift that is quiet at the end.
    ever_resolved = {(r.endpoint, r.feature) for r in offline.resolutions}
    last_detected: dict[tuple[str, str], int] = {}
    for d in offline.detections:
        last_detected[(d.endpoint, d.feature)] = d.event_index
    last_resolved = {
        (r.endpoint, r.feature)
        for r in offline.resolutions
        if r.event_index > last_detected[(r.endpoint, r.feature)]
    }
    assert last_resolved
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()
        wait_for(lambda: firing() == expected, timeout=120, every=0.5)
        # Resolutions come with the metrics refresh, every few seconds.
        wait_for(lambda: resolved() >= last_resolved, timeout=60, every=0.5)
        assert "webhook" not in daemon.log.read_text()  # no failure, no drop
    assert firing() == expected  # one post per detection, no more
    assert last_resolved <= resolved() <= ever_resolved
    assert all(p["model"] == "gpt-4o-mini-2024-07-18" for p in posts)
