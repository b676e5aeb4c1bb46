"""A JSON POST per detection and per resolution to one URL (``sinks.webhook``).

The body is a detection (the replay report's object, plus ``status: "firing"``, where and
when) or a resolution (``status: "resolved"``); with ``slack: true`` it is a Slack
incoming-webhook message, ``{"text": ...}``. Posts go through a bounded queue to one
background thread, so consumption never waits for the receiver: a full queue drops the new
post, a failed post is retried with back-off (``max_retries``), and every outcome is
counted (:attr:`WebhookSink.counts`). Best effort, like Alertmanager's queue: ``flush``
does not wait, so a checkpoint never depends on the receiver.

>>> from driftmon.settings import WebhookSettings
>>> sink = WebhookSink(WebhookSettings(url="http://127.0.0.1:9/hook", slack=True))
>>> slack_text({"status": "resolved", "endpoint": "chat", "model": "m1",
...             "feature": "refusal", "detector": "adwin"})
'refusal on chat / m1 is quiet again (adwin drift resolved)'
>>> sink.close(0.1)
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import structlog

from driftmon.alertmanager import error_kind, rfc3339
from driftmon.core.drifts import ActiveDrift
from driftmon.core.monitor import Detection
from driftmon.core.units import describe_change
from driftmon.metrics import Metrics
from driftmon.settings import WebhookSettings
from driftmon.sinks import Origin, Sink

log = structlog.get_logger(__name__)

BACKOFF_SECONDS: Final = (0.5, 10.0)  # first and longest pause between attempts
_IDLE_WAKE_SECONDS: Final = 0.5  # how often an idle sender looks for a shutdown


class WebhookSink(Sink):
    def __init__(
        self,
        settings: WebhookSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        if settings.url is None:
            raise ValueError("sinks.webhook.url is not set")
        self.settings = settings
        self._url = settings.url.get_secret_value()
        # Scheme and host only: a Slack webhook's path is its credential.
        parts = urllib.parse.urlsplit(self._url)
        self.label = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self._clock = clock
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=settings.queue_size)
        self._ssl_context = ssl.create_default_context()
        self._stop = threading.Event()
        self._deadline = float("inf")
        # ok, rejected (a 4xx: never retried), error (retries exhausted), dropped (queue
        # full), failed_attempts: each POST that did not succeed.
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()  # the main thread and the sender both count
        self._metrics = metrics
        self._thread = threading.Thread(target=self._run, name="driftmon-webhook", daemon=True)
        self._thread.start()

    def _count(self, outcome: str, n: int = 1) -> None:
        """Count an outcome here and in driftmon_webhook_posts_total{outcome}."""
        with self._counts_lock:
            self.counts[outcome] += n
        if self._metrics is not None and n:
            self._metrics.webhook_posts.labels(outcome).inc(n)

    # -- the lifecycle ------------------------------------------------------------------
    def add(self, detection: Detection, origin: Origin) -> None:
        when = detection.timestamp if detection.timestamp is not None else self._clock()
        body = detection.report()
        body.update(
            status="firing",
            detected_at=rfc3339(when),
            key_events=detection.key_events,
            events_since_onset=detection.events_since_onset,
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
        )
        self._put(body)

    def resolve(self, drift: ActiveDrift) -> None:
        self._put(
            {
                "status": "resolved",
                "endpoint": drift.endpoint,
                "model": drift.model,
                "feature": drift.feature,
                "detector": drift.detector,
                "baseline": drift.baseline,
                "current": drift.current,
                "detected_at": rfc3339(drift.detected_at),
                "resolved_at": rfc3339(self._clock()),
            }
        )

    def close(self, timeout: float) -> None:
        """Post what is queued within ``timeout`` seconds; count the rest as dropped."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 1.0)
        left = self._queue.qsize()
        if left:
            self._count("dropped", left)
            log.warning("webhook posts not delivered before shutdown", url=self.label, posts=left)

    # -- delivery -------------------------------------------------------------------------
    def _put(self, body: dict[str, Any]) -> None:
        payload = {"text": slack_text(body)} if self.settings.slack else body
        try:
            self._queue.put_nowait(json.dumps(payload, allow_nan=False, default=str).encode())
        except ValueError:  # NaN (a value not known): null instead
            self._put({k: _finite(v) for k, v in body.items()})
        except queue.Full:
            self._count("dropped", 1)
            log.warning("webhook queue full, post dropped", url=self.label)

    def _run(self) -> None:
        while True:
            try:
                body = self._queue.get(timeout=_IDLE_WAKE_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if self._stop.is_set() and time.monotonic() >= self._deadline:
                self._count("dropped", 1)  # the rest: counted by close()
                return
            self._count(self._deliver(body), 1)

    def _deliver(self, body: bytes) -> str:
        pause, longest = BACKOFF_SECONDS
        error = ""
        for attempt in range(self.settings.max_retries + 1):
            timeout = min(self.settings.timeout_seconds, self._deadline - time.monotonic())
            if timeout <= 0:
                break
            try:
                self._post(body, timeout)
            except urllib.error.HTTPError as exc:
                self._count("failed_attempts", 1)
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    log.warning("webhook rejected the post", url=self.label, status=exc.code)
                    return "rejected"
                error = f"HTTP {exc.code}"
            except (OSError, http.client.HTTPException) as exc:
                self._count("failed_attempts", 1)
                error = f"{error_kind(exc)}: {exc}"
            else:
                return "ok"
            if attempt < self.settings.max_retries and self._stop.wait(pause):
                break  # shutting down: no back-off, what is left is counted
            pause = min(pause * 2, longest)
        log.warning("webhook unreachable; post dropped", url=self.label, error=error[:300])
        return "error"

    def _post(self, body: bytes, timeout: float) -> None:
        request = urllib.request.Request(self._url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout, context=self._ssl_context) as resp:
            resp.read()


def slack_text(body: dict[str, Any]) -> str:
    """One line for a Slack message from a webhook body."""
    where = f"{body['feature']} on {body['endpoint']} / {body['model']}"
    if body["status"] == "resolved":
        return f"{where} is quiet again ({body['detector']} drift resolved)"
    change = describe_change(body["feature"], body["baseline"], body["current"])
    return f"Drift: {where}: {change} ({body['detector']}, detected at {body['detected_at']})"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
