"""The metrics port under 200 concurrent clients: the old ``ThreadingHTTPServer`` (listen
backlog 5, a thread per connection, no timeouts) beside ``driftmon.server``. Prints JSON
(progress goes to stderr).

Each implementation runs in its own subprocess on 127.0.0.1, serving the real ``Metrics``
plus the per-key families of ``--keys`` keys (what the daemon exports for its most
recently seen keys: ~80 series a key). One asyncio client process then runs ``--clients``
workers for ``--duration`` seconds; a quarter of them scrape ``/metrics``, the rest probe
``/healthz``; each request is a new connection (as kubelet probes are), timed from
connect to the last byte, and fails after ``--timeout`` s. With ``--busy`` the server's
main thread spins in Python, as the daemon's consumer loop does, competing for the GIL.

    python benchmarks/http_load.py [--clients 200] [--duration 20] [--keys 300] [--busy]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from driftmon.metrics import Metrics
from driftmon.server import serve

FEATURES = 10
DETECTORS = ("page_hinkley", "adwin")


class _KeyFamilies:
    """Per-key series as the daemon exports them, for ``keys`` keys."""

    def __init__(self, keys: int) -> None:
        self.keys = [(f"endpoint-{i}", f"model-{i % 3}") for i in range(keys)]
        self.features = [f"feature_{j}" for j in range(FEATURES)]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        key, feature, detector = (
            ["endpoint", "model"],
            ["endpoint", "model", "feature"],
            [
                "endpoint",
                "model",
                "feature",
                "detector",
            ],
        )
        events = CounterMetricFamily("driftmon_events", "Accepted events.", labels=key)
        per_feature = [
            GaugeMetricFamily(name, name, labels=feature)
            for name in (
                "driftmon_feature_value",
                "driftmon_feature_baseline",
                "driftmon_drift_active",
                "driftmon_last_detection_timestamp_seconds",
            )
        ]
        per_detector = [
            GaugeMetricFamily(name, name, labels=detector)
            for name in ("driftmon_detector_statistic", "driftmon_detector_threshold")
        ]
        detections = CounterMetricFamily("driftmon_drift_detections", "d", labels=detector)
        for i, (ep, model) in enumerate(self.keys):
            events.add_metric([ep, model], 1000.0 + i)
            for f in self.features:
                for family in per_feature:
                    family.add_metric([ep, model, f], 0.123456 * i)
                for d in DETECTORS:
                    for family in per_detector:
                        family.add_metric([ep, model, f, d], 1.5)
                    detections.add_metric([ep, model, f, d], 0.0)
        yield events
        yield from per_feature
        yield from per_detector
        yield detections


def old_serve(
    registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool]
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """The metrics server as it was before issue 18 (driftmon/metrics.py at 2487645)."""
    handler = functools.partial(_OldHandler, registry=registry, ready=ready)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


class _OldHandler(BaseHTTPRequestHandler):
    def __init__(
        self, *args: Any, registry: CollectorRegistry, ready: Callable[[], bool], **kwargs: Any
    ) -> None:
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
            self._reply(200, b"ok\n") if self.ready() else self._reply(503, b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_server(impl: str, keys: int, busy: bool) -> None:
    registry = CollectorRegistry()
    Metrics(registry, version="bench")
    registry.register(_KeyFamilies(keys))
    start = old_serve if impl == "old" else serve
    server, _ = start(registry, "127.0.0.1", 0, lambda: True)
    print(server.server_address[1], len(generate_latest(registry)), flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        if busy:
            sum(i * i for i in range(20_000))  # the daemon's loop: pure Python, holds the GIL
        else:
            stop.wait(0.1)
    server.shutdown()
    server.server_close()


async def _request(port: int, path: str, timeout: float) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
            )
            data = await reader.read()
            writer.close()
        ok = data.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    except (TimeoutError, OSError):
        ok = False
    return ok, time.perf_counter() - started


async def load(
    port: int, clients: int, metrics_every: int, duration: float, timeout: float
) -> dict[str, Any]:
    results: dict[str, list[tuple[bool, float]]] = {"/healthz": [], "/metrics": []}
    deadline = time.perf_counter() + duration

    async def worker(i: int) -> None:
        path = "/metrics" if metrics_every and i % metrics_every == 0 else "/healthz"
        while time.perf_counter() < deadline:
            results[path].append(await _request(port, path, timeout))

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return {path: summary(rs) for path, rs in results.items() if rs}


def summary(results: list[tuple[bool, float]]) -> dict[str, Any]:
    latencies = sorted(t for _, t in results)
    n = len(latencies)
    return {
        "requests": n,
        "failed": sum(not ok for ok, _ in results),
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(latencies[min(n - 1, int(0.99 * n))], 4),
        "max_s": round(latencies[-1], 4),
        "share_over_1s": round(sum(t > 1.0 for t in latencies) / n, 4),
        "share_over_5s": round(sum(t > 5.0 for t in latencies) / n, 4),
    }


def measure(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--serve", impl, "--keys", str(args.keys)]
    proc = subprocess.Popen(
        cmd + (["--busy"] if args.busy else []), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port, metrics_bytes = map(int, proc.stdout.readline().split())
        print(f"{impl}: port {port}, /metrics {metrics_bytes} bytes", file=sys.stderr)
        result = asyncio.run(
            load(port, args.clients, args.metrics_every, args.duration, args.timeout)
        )
        proc.stdin.close()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"metrics_bytes": metrics_bytes, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--metrics-every", type=int, default=4, help="0: only /healthz")
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--serve", choices=("old", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.keys, args.busy)
        return
    report = {
        "clients": args.clients,
        "metrics_clients": len(range(0, args.clients, args.metrics_every))
        if args.metrics_every
        else 0,
        "duration_s": args.duration,
        "keys": args.keys,
        "busy_main_thread": args.busy,
        "old_threading_http_server": measure("old", args),
        "new_driftmon_server": measure("new", args),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
