"""Where detections go: one interface, each output one module, wired from settings here.

A sink hears about the drift lifecycle (:mod:`driftmon.core.drifts`):

- ``add(detection, origin)``: a detector fired (once per detection, with where it happened);
- ``fire(drift)``: the drift is active, on detection (before ``add``) and for each active
  drift restored from a checkpoint;
- ``resolve(drift)``: quiet again; ``forget(drift)``: no longer ours (partition revoked or
  reset): stop re-sending it without resolving it;
- ``tick()``: once per poll loop; ``flush()``: before state is saved and offsets are
  committed (what a sink has taken must be durable by then, or be best effort);
  ``close(timeout)``: at shutdown, in order, after the last checkpoint.

None of these may block consumption for long: a sink that talks to a slow service queues
(bounded) and sends from its own thread. :class:`Sink` gives every method a no-op default,
so a sink implements what it needs. A new sink is one module plus, when it is configured,
its settings section and one line in :func:`build_sinks` (docs/extending-sinks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from driftmon.core.drifts import ActiveDrift
from driftmon.core.monitor import Detection

if TYPE_CHECKING:
    from driftmon.alertmanager import AlertSender
    from driftmon.metrics import Metrics
    from driftmon.settings import Settings

_log = structlog.get_logger(__name__)  # not "log": that is the log sink submodule


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a detection happened: the record (or the sampled output's record) that
    triggered it."""

    topic: str
    partition: int
    offset: int


class Sink:
    """An output for detections and drift changes; every method defaults to doing nothing."""

    def add(self, detection: Detection, origin: Origin) -> None:
        """A new detection (after :meth:`fire` of its drift)."""

    def fire(self, drift: ActiveDrift) -> None:
        """``drift`` is active: detected now, or restored from a checkpoint."""

    def resolve(self, drift: ActiveDrift) -> None:
        """``drift`` is quiet again and no partition of this process still has it."""

    def forget(self, drift: ActiveDrift) -> None:
        """``drift`` left this process (its partition went elsewhere or started cold)."""

    def tick(self) -> None:
        """Once per poll loop: periodic work (re-sends)."""

    def flush(self) -> None:
        """Before state is saved and offsets are committed."""

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop."""


class Sinks(Sink):
    """All configured sinks, called in order; the order is the wiring's in
    :func:`build_sinks`."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    # A sink that raises must not stop consumption (and, raising again on the same
    # detection after a restart, crash-loop the daemon): it is logged and the others go on.
    def _each(self, action: str, call: Callable[[Sink], None]) -> None:
        for sink in self.sinks:
            try:
                call(sink)
            except Exception as exc:
                _log.error(
                    "sink failed", sink=type(sink).__name__, action=action, error=type(exc).__name__
                )

    def add(self, detection: Detection, origin: Origin) -> None:
        self._each("add", lambda sink: sink.add(detection, origin))

    def fire(self, drift: ActiveDrift) -> None:
        self._each("fire", lambda sink: sink.fire(drift))

    def resolve(self, drift: ActiveDrift) -> None:
        self._each("resolve", lambda sink: sink.resolve(drift))

    def forget(self, drift: ActiveDrift) -> None:
        self._each("forget", lambda sink: sink.forget(drift))

    def tick(self) -> None:
        self._each("tick", lambda sink: sink.tick())

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self, timeout: float) -> None:
        """One deadline for all: each sink gets what the ones before it left."""
        deadline = time.monotonic() + timeout
        self._each("close", lambda sink: sink.close(max(deadline - time.monotonic(), 0.1)))


class CallbackSink(Sink):
    """Hands each detection to ``callback`` when one is set (the demo's live view)."""

    def __init__(self, callback: Callable[[Detection], None] | None = None) -> None:
        self.callback = callback

    def add(self, detection: Detection, origin: Origin) -> None:
        if self.callback is not None:
            self.callback(detection)


def build_sinks(
    settings: Settings,
    metrics: Metrics,
    *,
    alerts: AlertSender,
    producer: Callable[[], Any],
    live: CallbackSink,
) -> Sinks:
    """The daemon's sinks from ``settings``: Alertmanager, the detections topic (through
    ``producer()``, the daemon's Kafka producer once connected), the log line, the live
    view, and the webhook when ``sinks.webhook.url`` is set."""
    from driftmon.sinks.alertmanager import AlertmanagerSink
    from driftmon.sinks.kafka import DetectionTopicSink
    from driftmon.sinks.log import LogSink

    sinks: list[Sink] = [
        AlertmanagerSink(alerts),
        DetectionTopicSink(settings.kafka.detections_topic, producer, metrics),
        LogSink(),
        live,
    ]
    if settings.sinks.webhook.url is not None:
        from driftmon.sinks.webhook import WebhookSink

        sinks.append(WebhookSink(settings.sinks.webhook, metrics=metrics))
    return Sinks(sinks)
