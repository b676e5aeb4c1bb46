"""The metrics port under real sockets on 127.0.0.1: timeouts, disconnects, many clients,
/healthz beside a slow scrape."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from driftmon.server import MetricsServer, Route, json_response, serve
from tests.support import wait_for

# Generous: the machine is shared, and no assertion here is about speed.
CLIENT_TIMEOUT = 60.0


class _Blocking:
    """A collector whose first collect() blocks until released."""

    def __init__(self) -> None:
        self.collecting = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.calls = 0

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        if self.calls == 1:
            self.collecting.set()
            assert self.release.wait(CLIENT_TIMEOUT)
            self.finished.set()
        yield GaugeMetricFamily("blocking_calls", "Collect calls.", value=self.calls)


def _events(registry: CollectorRegistry) -> Counter:
    return Counter("driftmon_events", "Accepted events.", ["endpoint", "model"], registry=registry)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def running(request: pytest.FixtureRequest, registry: CollectorRegistry) -> Iterator[MetricsServer]:
    kwargs = getattr(request, "param", {})
    server, thread = serve(registry, "127.0.0.1", 0, lambda: True, **kwargs)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(CLIENT_TIMEOUT)
    assert not thread.is_alive()


def _get(server: MetricsServer, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], CLIENT_TIMEOUT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _raw(server: MetricsServer, data: bytes) -> bytes:
    """Send ``data``, read until the server closes (a reset after the reply included: the
    server does not read what it refuses)."""
    chunks = []
    address = ("127.0.0.1", server.server_address[1])
    with (
        socket.create_connection(address, CLIENT_TIMEOUT) as s,
        contextlib.suppress(ConnectionResetError, BrokenPipeError),
    ):
        s.sendall(data)
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("running", [{"read_timeout": 0.5}], indirect=True)
def test_idle_and_half_sent_connections_are_closed_after_the_read_timeout(
    running: MetricsServer,
) -> None:
    port = running.server_address[1]
    with (
        socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) as idle,
        socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) as half,
    ):
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # A server that kept them open would make recv() raise socket.timeout here.
        assert idle.recv(1024) == b""
        assert half.recv(1024) == b""
    assert _get(running, "/healthz") == (200, b"ok\n")


@pytest.mark.parametrize("running", [{"read_timeout": 0.5}], indirect=True)
def test_keep_alive_serves_several_requests_then_idles_out(running: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", running.server_address[1], CLIENT_TIMEOUT)
    try:
        replies = []
        for path in ("/healthz", "/readyz", "/metrics", "/healthz"):
            conn.request("GET", path)
            response = conn.getresponse()
            replies.append((response.status, response.getheader("Connection")))
            response.read()
            sock = conn.sock
        assert replies == [(200, "keep-alive")] * 4
        assert sock is not None and sock.recv(1024) == b""  # closed once idle
    finally:
        conn.close()


_DISCONNECT_SCRIPT = """
import sys
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from driftmon import logs
from driftmon.server import serve

class Big:
    def describe(self):
        return []
    def collect(self):
        family = GaugeMetricFamily("big", "A large exposition.", labels=["key"])
        for i in range(100_000):
            family.add_metric(["k" * 40 + str(i)], i)
        yield family

logs.configure("debug", "json")
registry = CollectorRegistry()
registry.register(Big())
server, thread = serve(registry, "127.0.0.1", 0, lambda: True, metrics_min_interval=0)
print(server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
server.server_close()
"""


def test_a_client_that_disconnects_mid_response_is_one_debug_json_line(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DISCONNECT_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        for reset in (True, False):
            with socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(1024).startswith(b"HTTP/1.1 200 OK")  # the reply has begun
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        def disconnects() -> int:
            return stderr.read_text().count('"metrics client disconnected"')

        wait_for(lambda: disconnects() >= 2, timeout=CLIENT_TIMEOUT)
        with socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) as s:
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 200 OK")
        proc.stdin.close()
        assert proc.wait(CLIENT_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = stderr.read_text()
    assert "Traceback" not in text
    records = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert {r["level"] for r in records if r["event"] == "metrics client disconnected"} == {"debug"}


def test_200_concurrent_clients_all_get_answers(
    running: MetricsServer, registry: CollectorRegistry
) -> None:
    events = _events(registry)
    for i in range(100):
        events.labels(f"ep{i}", "m1").inc()
    clients = 200
    start = threading.Barrier(clients)
    replies: list[tuple[str, int, bytes] | BaseException] = []

    def client(i: int) -> None:
        path = "/metrics" if i % 4 == 0 else "/healthz"
        start.wait(CLIENT_TIMEOUT)
        try:
            replies.append((path, *_get(running, path)))
        except BaseException as exc:
            replies.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * CLIENT_TIMEOUT)
    assert len(replies) == clients
    failed = [r for r in replies if not isinstance(r, tuple) or r[1] != 200]
    assert failed == []
    for path, _, body in replies:  # type: ignore[misc]
        if path == "/healthz":
            assert body == b"ok\n"
        else:
            assert b'driftmon_events_total{endpoint="ep99",model="m1"} 1.0' in body


def test_healthz_answers_while_a_slow_scrape_and_a_slow_route_hold_every_worker(
    registry: CollectorRegistry,
) -> None:
    blocking = _Blocking()
    registry.register(blocking)
    route_entered, route_release = threading.Event(), threading.Event()

    def slow_route() -> tuple[int, bytes, str]:
        route_entered.set()
        assert route_release.wait(CLIENT_TIMEOUT)
        return json_response({"done": True})

    routes = {"/slow": Route(slow_route)}
    server, thread = serve(registry, "127.0.0.1", 0, lambda: False, routes=routes)
    replies: dict[str, tuple[int, bytes]] = {}
    scrapes = [
        threading.Thread(target=lambda p=p: replies.__setitem__(p, _get(server, p)))
        for p in ("/metrics", "/slow")
    ]
    try:
        for t in scrapes:
            t.start()
        assert blocking.collecting.wait(CLIENT_TIMEOUT)
        assert route_entered.wait(CLIENT_TIMEOUT)
        assert _get(server, "/healthz") == (200, b"ok\n")
        assert _get(server, "/readyz") == (503, b"not ready\n")
        # Both answered while the scrape and the route were still blocked.
        assert not blocking.finished.is_set()
        assert replies == {}
    finally:
        blocking.release.set()
        route_release.set()
        for t in scrapes:
            t.join(CLIENT_TIMEOUT)
        server.shutdown()
        server.server_close()
        thread.join(CLIENT_TIMEOUT)
    assert replies["/slow"] == (200, b'{"done": true}')
    assert replies["/metrics"][0] == 200
    assert b"blocking_calls 1.0" in replies["/metrics"][1]


@pytest.mark.parametrize("running", [{"metrics_min_interval": 0.0}], indirect=True)
def test_scrapes_waiting_on_one_rendering_share_the_next(
    running: MetricsServer, registry: CollectorRegistry
) -> None:
    blocking = _Blocking()
    registry.register(blocking)
    replies: list[tuple[int, bytes]] = []

    def scrape() -> None:
        replies.append(_get(running, "/metrics"))

    first = threading.Thread(target=scrape)
    first.start()
    assert blocking.collecting.wait(CLIENT_TIMEOUT)
    waiting = [threading.Thread(target=scrape) for _ in range(5)]
    for t in waiting:
        t.start()
    wait_for(lambda: len(running._connections) == 6, timeout=CLIENT_TIMEOUT)
    time.sleep(1.0)  # let the server read the five request heads
    blocking.release.set()
    for t in [first, *waiting]:
        t.join(CLIENT_TIMEOUT)
    # The first rendering began before the five arrived, so they share a second one.
    assert blocking.calls == 2
    bodies = sorted(body for _, body in replies)
    assert [b"blocking_calls 1.0" in b for b in bodies].count(True) == 1
    assert [b"blocking_calls 2.0" in b for b in bodies].count(True) == 5


def test_a_scrape_sees_every_change_made_before_it(
    running: MetricsServer, registry: CollectorRegistry
) -> None:
    events = _events(registry)
    line = b'driftmon_events_total{endpoint="chat",model="m1"} '
    for n in range(1, 4):
        events.labels("chat", "m1").inc()
        assert line + f"{n}.0".encode() in _get(running, "/metrics")[1]


def test_protocol_errors_are_answered_not_crashed_on(running: MetricsServer) -> None:
    assert _raw(running, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw(running, b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000).startswith(b"HTTP/1.1 431 ")
    post = _raw(running, b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    assert post.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in post
    head = _raw(running, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(
        b"Content-Length: 3\r\nConnection: close\r\n\r\n"
    )
    assert _get(running, "/nope") == (404, b"not found\n")
    assert _get(running, "/healthz") == (200, b"ok\n")


def test_extra_json_routes_and_a_failing_route(registry: CollectorRegistry) -> None:
    def broken() -> tuple[int, bytes, str]:
        raise RuntimeError("boom")

    routes = {
        "/transitions": Route(lambda: json_response([{"verdict": "ok"}])),
        "/broken": Route(broken),
    }
    server, thread = serve(registry, "127.0.0.1", 0, lambda: True, routes=routes)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], CLIENT_TIMEOUT)
        conn.request("GET", "/transitions?since=0")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read()) == [{"verdict": "ok"}]
        conn.close()
        assert _get(server, "/broken") == (500, b"internal error\n")
        assert _get(server, "/healthz") == (200, b"ok\n")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(CLIENT_TIMEOUT)


def test_shutdown_does_not_wait_for_idle_connections(registry: CollectorRegistry) -> None:
    server, thread = serve(registry, "127.0.0.1", 0, lambda: True)
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT) for _ in range(3)]
    try:
        wait_for(lambda: len(server._connections) == 3, timeout=CLIENT_TIMEOUT)
        server.shutdown()
        server.server_close()
        thread.join(CLIENT_TIMEOUT)
        assert not thread.is_alive()
        assert all(s.recv(1024) == b"" for s in idle)
    finally:
        for s in idle:
            s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), CLIENT_TIMEOUT)
