"""Drifts as Alertmanager alerts: fired while active, re-sent, resolved (SPEC §6)."""

from __future__ import annotations

from driftmon.alertmanager import AlertSender
from driftmon.core.drifts import ActiveDrift
from driftmon.sinks import Sink


class AlertmanagerSink(Sink):
    """The lifecycle side of :class:`~driftmon.alertmanager.AlertSender`, which queues and
    delivers on its own threads (``flush`` has nothing to wait for)."""

    def __init__(self, sender: AlertSender) -> None:
        self.sender = sender

    def fire(self, drift: ActiveDrift) -> None:
        # A restored drift fires with its saved detected_at: the same startsAt, so
        # Alertmanager sees the alert continue.
        self.sender.fire(
            drift.endpoint,
            drift.model,
            drift.feature,
            detector=drift.detector,
            baseline=drift.baseline,
            current=drift.current,
            key_events=drift.key_events,
            events_since_onset=drift.events_since_onset,
            detected_at=drift.detected_at,
            kind=drift.kind,
        )

    def resolve(self, drift: ActiveDrift) -> None:
        self.sender.resolve(*drift.key)

    def forget(self, drift: ActiveDrift) -> None:
        self.sender.forget(*drift.key)

    def tick(self) -> None:
        self.sender.tick()

    def close(self, timeout: float) -> None:
        self.sender.close(timeout=timeout)
