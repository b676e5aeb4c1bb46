"""The metrics port: ``/metrics``, ``/healthz``, ``/readyz`` (SPEC §5) and a route table for
more JSON endpoints.

One asyncio event loop in a daemon thread holds every connection, so an idle or slow client
costs a coroutine, not a thread: hundreds of probes and scrapers at once are answered,
and ``/healthz`` and ``/readyz`` are answered on the loop itself, never queued behind a
``/metrics`` scrape. Rendering ``/metrics`` and any other route run in a small worker
pool; concurrent scrapes share one rendering. Every connection has a read and idle
timeout and a bounded number of keep-alive requests. A client that goes away is one debug
log line, never a traceback.

>>> import urllib.request
>>> from prometheus_client import CollectorRegistry
>>> server, thread = serve(CollectorRegistry(), "127.0.0.1", 0, ready=lambda: True)
>>> url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
>>> urllib.request.urlopen(url, timeout=10).read()
b'ok\\n'
>>> server.shutdown(); server.server_close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, NamedTuple

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = structlog.get_logger(__name__)

# socketserver's default of 5 overflowed with a few dozen simultaneous probes: the kernel
# dropped the SYNs and clients waited out 1 s, 3 s, 7 s retransmits.
LISTEN_BACKLOG: Final = 1024
MAX_CONNECTIONS: Final = 1024
# A request head must arrive, and a keep-alive connection must send its next request,
# within this; a response must be taken by the client within it too.
READ_TIMEOUT: Final = 10.0
MAX_REQUESTS_PER_CONNECTION: Final = 100
MAX_HEAD_BYTES: Final = 16 * 1024
# Rendering holds the GIL (a 3 MB exposition takes ~0.5 s) against the daemon's loop and
# /healthz. After one, the next waits METRICS_REST times as long as it took, and at least
# METRICS_MIN_INTERVAL: a scrape storm gets a quarter of the process's time, a scrape
# every few seconds is never delayed, and a scrape still sees every change made before
# it was sent.
METRICS_MIN_INTERVAL: Final = 0.25
METRICS_REST: Final = 3.0
WORKERS: Final = 2

TEXT: Final = "text/plain; charset=utf-8"
_DISCONNECTS: Final = (ConnectionError, asyncio.IncompleteReadError)


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = TEXT


def json_response(value: Any, status: int = 200) -> Response:
    """A JSON route's reply.

    >>> json_response({"a": 1})
    Response(status=200, body=b'{"a": 1}', content_type='application/json')
    """
    return Response(status, json.dumps(value).encode(), "application/json")


@dataclass(frozen=True)
class Route:
    """A GET endpoint. ``inline`` handlers must be cheap and non-blocking: they run on the
    event loop and answer even while every worker is busy; others run in the worker pool."""

    handler: Callable[[], Response]
    inline: bool = False


class _Request(NamedTuple):
    method: str
    path: str
    keep_alive: bool
    has_body: bool


def serve(
    registry: CollectorRegistry,
    host: str,
    port: int,
    ready: Callable[[], bool],
    *,
    routes: Mapping[str, Route] | None = None,
    read_timeout: float = READ_TIMEOUT,
    metrics_min_interval: float = METRICS_MIN_INTERVAL,
) -> tuple[MetricsServer, threading.Thread]:
    """Serve /metrics, /healthz, /readyz and ``routes`` in a daemon thread.

    The port is bound before this returns (``server.server_address[1]`` is the real port
    when ``port`` is 0). Stop it with ``server.shutdown(); server.server_close()``.
    """
    table = {
        "/healthz": Route(lambda: Response(200, b"ok\n"), inline=True),
        "/readyz": Route(
            lambda: Response(200, b"ok\n") if ready() else Response(503, b"not ready\n"),
            inline=True,
        ),
        **(routes or {}),
    }
    server = MetricsServer(
        _listen(host, port),
        registry,
        table,
        read_timeout=read_timeout,
        metrics_min_interval=metrics_min_interval,
    )
    thread = threading.Thread(target=server.serve_forever, name="driftmon-metrics", daemon=True)
    thread.start()
    server.wait_started()
    return server, thread


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


class MetricsServer:
    """The running server; ``socketserver``'s ``shutdown()``/``server_close()`` API."""

    def __init__(
        self,
        sock: socket.socket,
        registry: CollectorRegistry,
        routes: Mapping[str, Route],
        *,
        read_timeout: float,
        metrics_min_interval: float,
    ) -> None:
        self.socket = sock
        self.server_address: tuple[Any, ...] = sock.getsockname()
        self.registry = registry
        self.routes = dict(routes)
        self.read_timeout = read_timeout
        self.metrics_min_interval = metrics_min_interval
        self._loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, "driftmon-http")
        self._connections: set[asyncio.Task[Any]] = set()
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._start_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._metrics_lock: asyncio.Lock | None = None
        self._metrics_body = b""
        self._metrics_started = float("-inf")
        self._metrics_next = float("-inf")

    # -- lifecycle ------------------------------------------------------------------
    def serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_loop_exception)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:
            log.error("metrics server stopped", error=type(exc).__name__)
            self._start_error = exc
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._loop.close()
            self._started.set()
            self._stopped.set()

    def wait_started(self) -> None:
        self._started.wait()
        if self._start_error is not None:
            self.socket.close()
            raise self._start_error

    def shutdown(self) -> None:
        """Stop serving and drop open connections; returns once the loop has ended."""
        if self._stopped.is_set():
            return
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._stopped.wait()

    def server_close(self) -> None:
        self.shutdown()
        self.socket.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._metrics_lock = asyncio.Lock()
        server = await asyncio.start_server(
            self._connection, sock=self.socket, backlog=LISTEN_BACKLOG, limit=MAX_HEAD_BYTES
        )
        self._started.set()
        await self._stop.wait()
        server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # -- one connection -------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        # drain() then waits until the kernel has every byte, so close() loses nothing.
        writer.transport.set_write_buffer_limits(high=0)
        clean = False
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                await self._send(writer, Response(503, b"too many connections\n"), False, False)
                return
            for served in range(1, MAX_REQUESTS_PER_CONNECTION + 1):
                request = await self._read_request(reader, writer)
                if request is None:
                    return
                response = await self._respond(request)
                # An unread body would be parsed as the next request.
                keep_alive = (
                    request.keep_alive
                    and not request.has_body
                    and served < MAX_REQUESTS_PER_CONNECTION
                )
                await self._send(writer, response, keep_alive, request.method == "HEAD")
                if not keep_alive:
                    break
            clean = True
        except _DISCONNECTS as exc:
            log.debug("metrics client disconnected", error=type(exc).__name__)
        except TimeoutError:
            log.debug("metrics client too slow to read the response, dropped")
        except Exception:
            log.exception("metrics connection failed")
        finally:
            self._connections.discard(task)
            if clean:
                writer.close()
            else:
                writer.transport.abort()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        """The next request head, or None when the connection is to be closed."""
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            log.debug("metrics client idle, closed", timeout=self.read_timeout)
            return None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.debug("metrics client disconnected mid-request")
            return None
        except asyncio.LimitOverrunError:
            await self._send(writer, Response(431, b"request head too large\n"), False, False)
            return None
        request = _parse(head)
        if request is None:
            await self._send(writer, Response(400, b"bad request\n"), False, False)
        return request

    async def _respond(self, request: _Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n")
        try:
            if request.path == "/metrics":
                return Response(200, await self._metrics(), CONTENT_TYPE_LATEST)
            route = self.routes.get(request.path)
            if route is None:
                return Response(404, b"not found\n")
            if route.inline:
                return route.handler()
            return await self._loop.run_in_executor(self._pool, route.handler)
        except Exception:
            log.exception("metrics endpoint failed", path=request.path)
            return Response(500, b"internal error\n")

    async def _metrics(self) -> bytes:
        """The exposition, rendered after this request arrived; one rendering serves every
        scrape that was waiting for it."""
        assert self._metrics_lock is not None
        arrived = self._loop.time()
        async with self._metrics_lock:
            if self._metrics_started >= arrived:
                return self._metrics_body
            wait = self._metrics_next - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            started = self._loop.time()
            body = await self._loop.run_in_executor(self._pool, generate_latest, self.registry)
            ended = self._loop.time()
            self._metrics_body, self._metrics_started = body, started
            self._metrics_next = ended + max(
                self.metrics_min_interval, METRICS_REST * (ended - started)
            )
            return body

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool, head_only: bool
    ) -> None:
        status = HTTPStatus(response.status)
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            + ("Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else "")
            + "\r\n"
        )
        writer.write(head.encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        async with asyncio.timeout(self.read_timeout):
            await writer.drain()


def _parse(head: bytes) -> _Request | None:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip().lower()
    tokens = {t.strip() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    has_body = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
    return _Request(method, target.split("?", 1)[0], keep_alive, has_body)


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, ConnectionError):
        log.debug("metrics client disconnected", error=type(exc).__name__)
    else:
        log.error(
            "metrics server error",
            message=context.get("message"),
            error=type(exc).__name__ if exc else None,
        )
