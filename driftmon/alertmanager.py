"""Drift alerts (and model-transition alerts) out to Alertmanager (API v2,
``POST /api/v2/alerts``; SPEC §6 and §7).

The truth is two dicts: alerts currently firing, and resolves not yet delivered everywhere. The
send queues are only transport: whatever they drop or fail to deliver, the next resend covers.
Each Alertmanager URL (the replicas of one HA cluster, usually) has its own queue and background
thread, so ``fire()`` and ``resolve()`` never wait for Alertmanager, and a down replica never
delays delivery to the others.

An outage shows at once: every failed attempt counts in ``driftmon_alert_send_failures_total``,
``driftmon_alerts_undelivered`` holds the alerts a URL has not accepted yet, and the first
failure logs a warning (then one line per ``failure_log_interval`` with a count, and one when
the URL answers again).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import structlog

from driftmon.core.monitor import detection_id
from driftmon.core.units import describe_change
from driftmon.metrics import Metrics
from driftmon.settings import AlertmanagerSettings

ALERTNAME: Final = "LLMOutputDrift"
INPUT_DRIFT_ALERTNAME: Final = "LLMInputDrift"  # an output drift explained by the inputs
TRANSITION_ALERTNAME: Final = "LLMModelTransition"
MAX_ALERTS_PER_POST: Final = 1000
# Firing alerts carry endsAt this many resend intervals ahead, so a crashed driftmon's alerts
# resolve by themselves in Alertmanager.
ENDS_AT_RESEND_INTERVALS: Final = 4
# While a URL keeps failing, one warning line per this many seconds (with a count).
FAILURE_LOG_INTERVAL: Final = 30.0

log = structlog.get_logger(__name__)

AlertKey = tuple[str, ...]
"""The identity of one alert: ``(endpoint, model, feature)`` for a model drift,
``("LLMInputDrift", endpoint, model, feature)`` for an input drift; other alerts
(:meth:`AlertSender.fire_alert`) use keys of other lengths, so they never meet."""

Outcome = Literal["ok", "error", "rejected"]


@dataclass(frozen=True, slots=True)
class _Alert:
    key: AlertKey
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    # None while firing: endsAt is then computed when posting, so a late delivery is not stale.
    ends_at: float | None


@dataclass(eq=False)
class _Target:
    """One Alertmanager URL: its own queue and sender thread (the lock is shared)."""

    url: str
    # The URL without credentials, query or fragment: for metric labels and logs.
    label: str
    cond: threading.Condition
    queue: OrderedDict[AlertKey, _Alert] = field(default_factory=OrderedDict)
    thread: threading.Thread | None = None
    # Alerts this URL has not accepted yet: queued, being sent, or failed and waiting for
    # the next resend (under the lock).
    unaccepted: set[AlertKey] = field(default_factory=set)
    sending: set[AlertKey] = field(default_factory=set)
    # Outage bookkeeping, touched by the target's own sender thread only.
    failing_since: float | None = None
    failures: int = 0
    failures_unlogged: int = 0
    last_failure_log: float = 0.0

    def failed(self, kind: str, error: str, log_interval: float) -> None:
        """A retriable failure: the first of an outage is logged at once, later ones once
        per ``log_interval`` seconds with their count."""
        now = time.monotonic()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
            self.last_failure_log = now
            self.failures_unlogged = 0
            log.warning(
                "alertmanager send failing; retrying",
                url=self.label,
                error_type=kind,
                error=error,
                undelivered=len(self.unaccepted),
            )
            return
        self.failures_unlogged += 1
        if now - self.last_failure_log >= log_interval:
            log.warning(
                "alertmanager still failing",
                url=self.label,
                error_type=kind,
                error=error,
                failures=self.failures_unlogged,
                failing_seconds=round(now - self.failing_since, 1),
                undelivered=len(self.unaccepted),
            )
            self.last_failure_log = now
            self.failures_unlogged = 0

    def answered(self) -> None:
        """Alertmanager answered for good (accepted or rejected): an outage, if any, is over."""
        if self.failing_since is None:
            return
        log.info(
            "alertmanager reachable again",
            url=self.label,
            failures=self.failures,
            failing_seconds=round(time.monotonic() - self.failing_since, 1),
        )
        self.failing_since = None
        self.failures = 0
        self.failures_unlogged = 0


class _Delivery:
    """The HTTP side of one batch to one URL: POST with retries and back-off, cut short by
    the shutdown deadline (``deadline``, set by :meth:`AlertSender.close`) or ``abort``."""

    def __init__(
        self,
        settings: AlertmanagerSettings,
        metrics: Metrics | None,
        clock: Callable[[], float],
        lock: threading.Lock,
        *,
        initial_backoff: float,
        max_backoff: float,
        failure_log_interval: float,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.lock = lock
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.failure_log_interval = failure_log_interval
        self.ssl_context = ssl_context(settings)
        self.deadline: float | None = None
        self.abort = threading.Event()

    def post(self, target: _Target, batch: list[_Alert]) -> Outcome:
        url = target.label
        delay = self.initial_backoff
        error = ""
        attempts = 0
        while attempts <= self.settings.max_retries:
            timeout = self._remaining(self.settings.timeout_seconds)
            if timeout <= 0:
                break
            attempts += 1
            try:
                self._post(target.url, self._payload(batch), timeout)
            except urllib.error.HTTPError as exc:
                kind = error_kind(exc)
                self._count_failure(target, kind)
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    target.answered()
                    log.warning(
                        "alertmanager rejected alerts",
                        url=url,
                        alerts=len(batch),
                        status=exc.code,
                        response=_read_error(exc),
                    )
                    return "rejected"
                error = f"HTTP {exc.code}"
                target.failed(kind, error, self.failure_log_interval)
            except (OSError, http.client.HTTPException) as exc:
                kind = error_kind(exc)
                self._count_failure(target, kind)
                error = str(exc) or type(exc).__name__
                target.failed(kind, error, self.failure_log_interval)
            else:
                target.answered()
                log.debug("alerts sent", url=url, alerts=len(batch), attempts=attempts)
                return "ok"
            log.debug("alertmanager send failed", url=url, error=error, attempt=attempts)
            if attempts > self.settings.max_retries or not self._pause(target, delay):
                break
            delay = min(delay * 2, self.max_backoff)
        log.warning(
            "alertmanager unreachable; alerts kept for the next resend",
            url=url,
            alerts=len(batch),
            attempts=attempts,
            error=error,
        )
        return "error"

    def _count_failure(self, target: _Target, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.alert_send_failures.labels(target.label, kind).inc()

    def _remaining(self, limit: float) -> float:
        """``limit``, cut short by the shutdown deadline; 0 when aborting."""
        if self.abort.is_set():
            return 0.0
        if self.deadline is None:
            return limit
        return min(limit, self.deadline - time.monotonic())

    def _pause(self, target: _Target, delay: float) -> bool:
        """Sleep between retries; False when shutdown leaves no time for another attempt."""
        end = time.monotonic() + delay
        with self.lock:
            while not self.abort.is_set():
                if self.deadline is not None and self.deadline < end:
                    return False
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return True
                # close() notifies, so a shutdown does not sit out a long backoff.
                target.cond.wait(remaining)
        return False

    def _payload(self, batch: list[_Alert]) -> bytes:
        now = self.clock()
        ends_ahead = ENDS_AT_RESEND_INTERVALS * self.settings.resend_interval_seconds
        alerts: list[dict[str, Any]] = []
        for alert in batch:
            ends_at = now + ends_ahead if alert.ends_at is None else alert.ends_at
            item: dict[str, Any] = {
                "labels": alert.labels,
                "annotations": alert.annotations,
                "startsAt": rfc3339(alert.starts_at),
                "endsAt": rfc3339(ends_at),
            }
            if self.settings.generator_url:
                item["generatorURL"] = self.settings.generator_url
            alerts.append(item)
        return json.dumps(alerts).encode()

    def _post(self, url: str, body: bytes, timeout: float) -> None:
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        authorization = self._authorization()
        if authorization is not None:
            request.add_header("Authorization", authorization)
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context) as resp:
            resp.read()

    def _authorization(self) -> str | None:
        token = self.settings.token()  # read per request: token files get rotated
        if token is not None:
            return f"Bearer {token}"
        if self.settings.username is not None:
            password = self.settings.password
            secret = "" if password is None else password.get_secret_value()
            raw = f"{self.settings.username}:{secret}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return None


class AlertSender:
    """Keeps drift alerts firing in Alertmanager, resolves them, never blocks the caller.

    >>> from driftmon.settings import AlertmanagerSettings
    >>> sender = AlertSender(AlertmanagerSettings(), None)  # no urls: state only, nothing sent
    >>> sender.fire("chat", "m1", "output_chars", detector="adwin", baseline=412.0,
    ...             current=1030.0, key_events=5120, events_since_onset=120,
    ...             detected_at=1_700_000_000.0)
    >>> sorted(sender.active())
    [('chat', 'm1', 'output_chars')]
    >>> sender.resolve("chat", "m1", "output_chars")
    >>> sender.active()
    set()
    >>> sender.close(1.0)
    """

    def __init__(
        self,
        settings: AlertmanagerSettings,
        metrics: Metrics | None,
        clock: Callable[[], float] = time.time,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        failure_log_interval: float = FAILURE_LOG_INTERVAL,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        endpoints = [(_alerts_endpoint(url), safe_url(url)) for url in settings.urls]
        self._lock = threading.Lock()
        self._delivery = _Delivery(
            settings,
            metrics,
            clock,
            self._lock,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            failure_log_interval=failure_log_interval,
        )
        self._targets = [
            _Target(url, label, threading.Condition(self._lock)) for url, label in endpoints
        ]
        if metrics is not None:
            for target in self._targets:  # 0 from the start: absent() and rules see the URL
                metrics.alerts_undelivered.labels(target.label).set(0)
        self._firing: dict[AlertKey, _Alert] = {}
        # A resolve stays pending until every URL has taken it (or refused it for good).
        self._pending_resolves: dict[AlertKey, tuple[_Alert, set[_Target]]] = {}
        self._next_resend = clock() + settings.resend_interval_seconds
        for i, target in enumerate(self._targets):
            target.thread = threading.Thread(
                target=self._run,
                args=(target,),
                name=f"driftmon-alertmanager-{i}",
                daemon=True,
            )
            target.thread.start()

    def fire(
        self,
        endpoint: str,
        model: str,
        feature: str,
        *,
        detector: str,
        baseline: float,
        current: float,
        key_events: int,
        events_since_onset: int | None,
        detected_at: float,
        kind: str = "drift",
    ) -> None:
        """Mark the alert firing and queue it; a re-fire updates annotations, keeps startsAt.

        ``baseline`` and ``current`` are in the feature's own unit (a :class:`Detection`'s);
        ``detected_at`` (epoch seconds) becomes startsAt and the ``detected_at`` annotation;
        ``key_events`` is the key's event count at the detection, ``events_since_onset``
        the detector's estimate of how long the change has been going on (None: none).
        ``kind`` ``"input_drift"`` (explained by a change of inputs) fires
        ``LLMInputDrift`` at ``input_drift_severity`` instead of ``LLMOutputDrift``; a
        re-fire of another kind resolves the alert of the old kind first (the labels
        differ: Alertmanager would keep both).
        """
        drift = (endpoint, model, feature)
        key, other = _drift_keys(drift, kind)
        self.resolve_alert(other)  # no-op unless the other kind is firing
        annotations = _annotations(
            drift, detector, baseline, current, key_events, events_since_onset, detected_at
        )
        if kind == "input_drift":
            annotations["summary"] += " (explained by a change of inputs)"
        self.fire_alert(key, self._labels(drift, kind), annotations, detected_at)

    def fire_alert(
        self,
        key: AlertKey,
        labels: dict[str, str],
        annotations: dict[str, str],
        started_at: float,
    ) -> None:
        """Mark any alert firing under ``key`` and queue it: re-sent, resolved and
        forgotten like a drift's. A re-fire updates labels and annotations and keeps
        startsAt; ``labels`` must identify the alert in Alertmanager."""
        with self._lock:
            previous = self._firing.get(key)
            alert = _Alert(
                key=key,
                labels=labels,
                annotations=annotations,
                # Alertmanager rejects startsAt after endsAt: clamp event-time clock skew.
                starts_at=min(started_at, self._clock())
                if previous is None
                else previous.starts_at,
                ends_at=None,
            )
            self._firing[key] = alert
            self._pending_resolves.pop(key, None)
            self._enqueue(alert, self._targets)

    def resolve(self, endpoint: str, model: str, feature: str) -> None:
        """Post the alert once with endsAt = now (kept until delivered); no-op if not firing."""
        for key in _drift_keys((endpoint, model, feature), "drift"):
            self.resolve_alert(key)

    def resolve_alert(self, key: AlertKey) -> None:
        """:meth:`resolve` for any key."""
        with self._lock:
            firing = self._firing.pop(key, None)
            if firing is None:
                return
            resolved = _Alert(
                key=key,
                labels=firing.labels,
                annotations=firing.annotations,
                starts_at=firing.starts_at,
                ends_at=max(self._clock(), firing.starts_at),
            )
            if self._targets:
                self._pending_resolves[key] = (resolved, set(self._targets))
                self._enqueue(resolved, self._targets)

    def forget(self, endpoint: str, model: str, feature: str) -> None:
        """Stop re-sending a firing alert without resolving it (its key moved to another
        consumer or away from this one): the last ``endsAt`` sent lets it expire unless
        the key's new owner fires it again."""
        for key in _drift_keys((endpoint, model, feature), "drift"):
            self.forget_alert(key)

    def forget_alert(self, key: AlertKey) -> None:
        """:meth:`forget` for any key."""
        with self._lock:
            self._firing.pop(key, None)
            for target in self._targets:
                self._settle(target, key)

    def tick(self) -> None:
        """Re-send firing alerts and undelivered resolves when the resend interval is due."""
        now = self._clock()
        if now < self._next_resend:
            return
        with self._lock:
            self._next_resend = now + self.settings.resend_interval_seconds
            for alert in self._firing.values():
                self._enqueue(alert, self._targets)
            for alert, unsettled in self._pending_resolves.values():
                self._enqueue(alert, unsettled)

    def active(self) -> set[AlertKey]:
        """Keys currently firing."""
        with self._lock:
            return set(self._firing)

    def queued(self) -> int:
        """Alerts waiting for sender threads, summed over URLs (not counting batches being
        sent)."""
        with self._lock:
            return sum(len(target.queue) for target in self._targets)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop the threads.

        Firing alerts are left firing: they resolve in Alertmanager when their endsAt passes.
        """
        with self._lock:
            if self._delivery.deadline is None:
                self._delivery.deadline = time.monotonic() + timeout
            self._notify_all()
        end = time.monotonic() + timeout
        for target in self._targets:
            assert target.thread is not None
            target.thread.join(max(end - time.monotonic(), 0.0))
        if any(t.thread is not None and t.thread.is_alive() for t in self._targets):
            self._delivery.abort.set()
            with self._lock:
                self._notify_all()
            for target in self._targets:
                assert target.thread is not None
                target.thread.join(0.5)
        with self._lock:
            unsent = {t.label: len(t.queue) for t in self._targets if t.queue}
        if unsent:
            log.warning("alerts not delivered before shutdown", alerts=unsent)

    def _notify_all(self) -> None:
        for target in self._targets:
            target.cond.notify_all()

    def _labels(self, key: AlertKey, kind: str = "drift") -> dict[str, str]:
        endpoint, model, feature = key
        if kind == "input_drift":
            alertname, severity = INPUT_DRIFT_ALERTNAME, self.settings.input_drift_severity
        else:
            alertname = ALERTNAME
            severity = self.settings.severity.get(feature, self.settings.default_severity)
        # The identifying labels win over a static label of the same name.
        return {
            **self.settings.static_labels,
            "alertname": alertname,
            "endpoint": endpoint,
            "model": model,
            "feature": feature,
            "severity": severity,
        }

    def _enqueue(self, alert: _Alert, targets: Iterable[_Target]) -> None:
        """Queue under the lock; a key already queued is replaced, never duplicated."""
        if self._delivery.deadline is not None:
            return
        for target in targets:
            queue = target.queue
            if alert.key in queue:
                del queue[alert.key]
            elif len(queue) >= self.settings.queue_size:
                dropped, _ = queue.popitem(last=False)
                self._settle(target, dropped)
                if self._metrics is not None:
                    self._metrics.alert_queue_dropped.inc()
            queue[alert.key] = alert
            target.unaccepted.add(alert.key)
            self._show_undelivered(target)
            target.cond.notify()

    def _settle(self, target: _Target, key: AlertKey) -> None:
        """Under the lock: stop counting ``key`` as undelivered to ``target`` unless it is
        queued, being sent, or will be sent again (firing, or a resolve it has not taken)."""
        pending = self._pending_resolves.get(key)
        if (
            key in target.queue
            or key in target.sending
            or key in self._firing
            or (pending is not None and target in pending[1])
        ):
            return
        target.unaccepted.discard(key)
        self._show_undelivered(target)

    def _show_undelivered(self, target: _Target) -> None:
        if self._metrics is not None:
            self._metrics.alerts_undelivered.labels(target.label).set(len(target.unaccepted))

    def _run(self, target: _Target) -> None:
        while True:
            with self._lock:
                while not target.queue and self._delivery.deadline is None:
                    target.cond.wait()
                if not target.queue or self._delivery.abort.is_set():
                    return
                count = min(len(target.queue), MAX_ALERTS_PER_POST)
                batch = [target.queue.popitem(last=False)[1] for _ in range(count)]
                target.sending = {alert.key for alert in batch}
            self._deliver(target, batch)

    def _deliver(self, target: _Target, batch: list[_Alert]) -> None:
        outcome = self._delivery.post(target, batch)
        if self._metrics is not None:
            self._metrics.alerts_sent.labels(outcome).inc(len(batch))
        with self._lock:
            target.sending = set()
            if outcome == "error":  # still owed where the next resend covers it
                for alert in batch:
                    self._settle(target, alert.key)
                return
            # Accepted, or rejected: a rejected alert will never be accepted, and retrying
            # it forever helps nobody. A newer version still queued stays owed.
            for alert in batch:
                if alert.key not in target.queue:
                    target.unaccepted.discard(alert.key)
            self._show_undelivered(target)
            for alert in batch:
                pending = self._pending_resolves.get(alert.key)
                if alert.ends_at is None or pending is None or pending[0] is not alert:
                    continue
                pending[1].discard(target)
                if not pending[1]:
                    del self._pending_resolves[alert.key]


def _drift_keys(drift: AlertKey, kind: str) -> tuple[AlertKey, AlertKey]:
    """The alert key of a drift of ``kind``, and of the other kind. An input drift's alert
    has labels of its own (``LLMInputDrift``), so it is a separate alert, keyed apart: a
    drift that changes kind resolves the one alert and fires the other."""
    explained: AlertKey = (INPUT_DRIFT_ALERTNAME, *drift)
    return (explained, drift) if kind == "input_drift" else (drift, explained)


def _annotations(
    key: AlertKey,
    detector: str,
    baseline: float,
    current: float,
    key_events: int,
    events_since_onset: int | None,
    detected_at: float,
) -> dict[str, str]:
    endpoint, model, feature = key
    if events_since_onset is None:
        onset = ""
    else:
        unit = "sampled output" if feature == "embedding_distance" else "event"
        plural = "" if events_since_onset == 1 else "s"
        onset = f"{events_since_onset:,} {unit}{plural} since onset, "
    return {
        "summary": f"{feature} drifted on {endpoint} / {model}",
        "description": (
            f"{feature}: {describe_change(feature, baseline, current)} "
            f"({detector}, {onset}detected at event {key_events:,} of this key)"
        ),
        "detected_at": rfc3339(detected_at),
        # The detection's stable id (as in the report, webhook and detections topic): a
        # receiver can join the alert to the record whichever replica sent it.
        "detection_id": detection_id(endpoint, model, feature, detector, key_events),
    }


def rfc3339(timestamp: float) -> str:
    """Epoch seconds → RFC 3339 UTC with milliseconds, e.g. ``2023-11-14T22:13:20.000Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ssl_context(settings: AlertmanagerSettings) -> ssl.SSLContext:
    if not settings.tls_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = None if settings.ca_file is None else str(settings.ca_file)
    return ssl.create_default_context(cafile=cafile)


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment (metric labels, logs):
    ``https://am.example:9093/prefix``."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def error_kind(exc: BaseException) -> str:
    """A failed POST as a small, bounded label value: ``timeout``, ``connection``, ``tls``,
    ``http_4xx``, ``http_5xx`` or ``protocol``."""
    if isinstance(exc, urllib.error.HTTPError):
        return "http_5xx" if exc.code >= 500 else "http_4xx"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason  # what urlopen wraps: refused, DNS, timeout, certificate
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return "timeout"
    if isinstance(exc, ssl.SSLError):  # certificate errors too
        return "tls"
    if isinstance(exc, ConnectionError):  # refused, reset, closed without an answer
        return "connection"
    if isinstance(exc, http.client.HTTPException):
        return "protocol"
    return "connection"


def _alerts_endpoint(url: str) -> str:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"alertmanager.urls: {url!r} must start with http:// or https://")
    return url.rstrip("/") + "/api/v2/alerts"


def _read_error(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(500).decode("utf-8", "replace")
    except OSError:
        return ""
