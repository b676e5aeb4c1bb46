"""Version transitions out of the daemon (SPEC §7, issue 12): a record on
``kafka.transitions_topic`` at each change, the transition metrics, the
``LLMModelTransition`` alert and the list ``GET /transitions`` serves.

Each partition's :class:`~driftmon.core.transitions.TransitionTracker` lives in its
pipeline and is checkpointed with it. The daemon calls, on its main thread only:

- :meth:`TransitionPublisher.before_batch` after each poll, before the batch is processed
  (a tracker first seen here was restored or is new: its counts so far are not new);
- :meth:`TransitionPublisher.publish` after the batch, before any checkpoint: what changed
  is produced, so the producer flush that precedes each checkpoint makes it durable before
  the state that says it was published is written;
- :meth:`TransitionPublisher.refresh` with the metrics refresh: waiting events folded into
  the statistics, every listed transition's report and effect sizes refreshed, and the
  series and alerts of transitions no longer listed removed.

A transition key ``(endpoint, from_model, to_model)`` held by several partitions (an
unkeyed producer) is shown once, from the partition that compared the most new-version
events. When a partition leaves (revoked, lost, reset), its transitions' series go, and
their alerts are forgotten (they expire unless the new owner fires them again), as for
drifts; one that is no longer listed (closed long ago) is resolved.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog
from kafka import TopicPartition

from driftmon import kafka as kafka_io
from driftmon.alertmanager import TRANSITION_ALERTNAME, AlertKey, AlertSender
from driftmon.core.transitions import OVERALL, Transition, TransitionTracker
from driftmon.metrics import Metrics
from driftmon.server import Response
from driftmon.settings import Settings

if TYPE_CHECKING:
    from driftmon.partitions import PartitionState

log = structlog.get_logger(__name__)

TransitionKey = tuple[str, str, str]
"""(endpoint, from_model, to_model)."""
Shown = tuple[TopicPartition, int]
"""A transition as one partition lists it: its partition and number."""
Gone = Literal["resolve", "forget"]
Stamp = tuple[int, int, str, bool, str, bool]
"""What a transition's report moves with: new and old answers, verdict, confounded, mode,
closed. Unchanged between two refreshes: no answer came, the report shown is current
(feedback events alone do not move it; the next answer refreshes them)."""

# Verdicts that may fire the alert (with a severity from transitions.severity).
ALERTING: Final = ("changed", "breaking")
EMPTY: Final = Response(200, b'{"transitions": []}', "application/json")


@dataclass(eq=False)
class _View:
    """What this publisher has shown of one partition's tracker."""

    tracker: TransitionTracker
    label: str  # "topic/N"
    opened: int  # tracker.opened already counted
    refused: Counter[str]  # tracker.refused already counted
    shown: dict[int, tuple[Transition, dict[str, Any]]] = field(default_factory=dict)
    refreshed: dict[int, Stamp] = field(default_factory=dict)  # stamps at the last refresh


class TransitionPublisher:
    """See the module doc. ``producer()`` is the daemon's Kafka producer once connected."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        alerts: AlertSender,
        producer: Callable[[], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = settings.kafka.transitions_topic
        self.severity = dict(settings.transitions.severity)
        self.static_labels = dict(settings.alertmanager.static_labels)
        self.metrics = metrics
        self.alerts = alerts
        self.producer = producer
        self.clock = clock
        self._views: dict[TopicPartition, _View] = {}
        self._holders: dict[TransitionKey, set[Shown]] = {}
        self._effects: dict[TransitionKey, set[str]] = {}  # features with effect series
        self._verdicts: dict[TransitionKey, str] = {}  # the verdict series set to 1
        self._firing: dict[TransitionKey, AlertKey] = {}
        self._fired_at: dict[TransitionKey, float] = {}  # when the firing alert first fired
        self._expired: dict[TransitionKey, AlertKey] = {}  # resolved after alert_hours
        self.alert_seconds = settings.transitions.alert_hours * 3600.0
        self._seq: dict[Shown, int] = {}  # first seen, for "newest last" without a time
        self._next_seq = 0
        # The reports GET /transitions lists: a tuple replaced whole, of dicts never
        # mutated once listed, so the server's threads read it without the daemon's lock;
        # they render it (JSON) only when asked, once per version.
        self._listed: tuple[dict[str, Any], ...] = ()
        self._render_lock = threading.Lock()
        self._rendered: tuple[tuple[dict[str, Any], ...], Response] = ((), EMPTY)

    # -- the daemon's steps ---------------------------------------------------------
    def before_batch(self, partitions: Mapping[TopicPartition, PartitionState]) -> None:
        self._guarded("before_batch", lambda: self._step(partitions, restored=True, drain=False))

    def publish(self, partitions: Mapping[TopicPartition, PartitionState]) -> None:
        self._guarded("publish", lambda: self._step(partitions, restored=False))

    def refresh(self, partitions: Mapping[TopicPartition, PartitionState]) -> None:
        def refresh() -> None:
            for view in self._views.values():
                view.tracker.flush()
            self._step(partitions, restored=False, full=True)
            self._expire_alerts()

        self._guarded("refresh", refresh)

    def response(self) -> Response:
        """``GET /transitions`` (any thread; renders in the caller's thread)."""
        listed = self._listed
        with self._render_lock:
            if self._rendered[0] is not listed:
                body = json.dumps({"transitions": listed}).encode()
                self._rendered = (listed, Response(200, body, "application/json"))
            return self._rendered[1]

    # -- internals ------------------------------------------------------------------
    @staticmethod
    def _guarded(step: str, call: Callable[[], None]) -> None:
        # As for a sink: a failure here must not stop consumption (and, failing again on
        # the same state after a restart, crash-loop the daemon). The next step retries.
        try:
            call()
        except Exception as exc:
            log.error("transition publishing failed", step=step, error=repr(exc)[:300])

    def _step(
        self,
        partitions: Mapping[TopicPartition, PartitionState],
        *,
        restored: bool,
        drain: bool = True,
        full: bool = False,
    ) -> None:
        dirty: dict[TransitionKey, Gone] = {}
        alert: set[TransitionKey] = set()
        for tp in [
            tp for tp, v in self._views.items() if _tracker(partitions.get(tp)) is not v.tracker
        ]:
            for t, _ in self._views.pop(tp).shown.values():
                self._unshow(tp, t, dirty, "forget")
        for tp, state in partitions.items():
            tracker = _tracker(state)
            if tracker is None:
                continue
            view = self._views.get(tp)
            if view is None:
                # Restored from a checkpoint (or new): what it counted was counted before.
                # After the poll, a new tracker is a partition reset within the batch.
                view = self._views[tp] = _View(
                    tracker,
                    f"{tp.topic}/{tp.partition}",
                    tracker.opened if restored else 0,
                    Counter(tracker.refused) if restored else Counter(),
                )
                for t in tracker.transitions():
                    self._show(tp, view, t, dirty)
                    if not t.closed:  # a closed one was told before the restart
                        alert.add(t.key)
            self._count(view)
            for t in tracker.drain_changed() if drain else ():
                report = self._show(tp, view, t, dirty)
                alert.add(t.key)
                self._produce(tp, state, view, report)
            if full:
                listed = {t.number: t for t in tracker.transitions()}
                for number, (t, _) in list(view.shown.items()):
                    if listed.get(number) is not t:
                        self._unshow(tp, t, dirty, "resolve")
                # Re-reported when answers came since the last refresh: the flush above
                # folded them in after the report shown (if any) was taken.
                stamps = {number: _stamp(t) for number, t in listed.items()}
                for number, t in listed.items():
                    if number not in view.shown or view.refreshed.get(number) != stamps[number]:
                        self._show(tp, view, t, dirty)
                view.refreshed = stamps
        for key, gone in dirty.items():
            self._apply(key, gone, key in alert)
        if dirty:
            self._listed = self._list()

    def _count(self, view: _View) -> None:
        tracker = view.tracker
        if tracker.opened > view.opened:
            self.metrics.transitions_opened.inc(tracker.opened - view.opened)
            view.opened = tracker.opened
        for reason, n in tracker.refused.items():
            if n > view.refused[reason]:
                self.metrics.transitions_refused.labels(reason).inc(n - view.refused[reason])
                view.refused[reason] = n

    def _show(
        self, tp: TopicPartition, view: _View, t: Transition, dirty: dict[TransitionKey, Gone]
    ) -> dict[str, Any]:
        report = t.report()
        report["partition"] = view.label
        view.shown[t.number] = (t, report)
        shown = (tp, t.number)
        self._holders.setdefault(t.key, set()).add(shown)
        if shown not in self._seq:
            self._seq[shown] = self._next_seq
            self._next_seq += 1
        dirty.setdefault(t.key, "resolve")
        return report

    def _unshow(
        self, tp: TopicPartition, t: Transition, dirty: dict[TransitionKey, Gone], gone: Gone
    ) -> None:
        view = self._views.get(tp)
        if view is not None:
            view.shown.pop(t.number, None)
        shown = (tp, t.number)
        self._seq.pop(shown, None)
        holders = self._holders.get(t.key)
        if holders is not None:
            holders.discard(shown)
            if not holders:
                del self._holders[t.key]
        # A partition that left wins: its alert is the new owner's to fire or let expire.
        if dirty.get(t.key) != "forget":
            dirty[t.key] = gone

    def _best(self, key: TransitionKey) -> tuple[Transition, dict[str, Any]] | None:
        holders = self._holders.get(key)
        if not holders:
            return None
        return max(
            (self._views[tp].shown[number] for tp, number in holders),
            key=lambda shown: (shown[1]["new_events"], shown[0].number),
        )

    def _apply(self, key: TransitionKey, gone: Gone, alert: bool) -> None:
        """The key's series and alert in line with its best holder (``alert``: its verdict
        changed, or it was first seen: the alert is sent again)."""
        best = self._best(key)
        m = self.metrics
        if best is None:
            m.remove_transition(*key, self._effects.pop(key, ()))
            self._verdicts.pop(key, None)
            self._fired_at.pop(key, None)
            self._expired.pop(key, None)
            firing = self._firing.pop(key, None)
            if firing is not None:
                if gone == "forget":
                    self.alerts.forget_alert(firing)
                else:
                    self.alerts.resolve_alert(firing)
            return
        t, report = best
        if self._verdicts.get(key) != t.verdict:
            for verdict in OVERALL:
                m.transition_verdict.labels(*key, verdict).set(1 if verdict == t.verdict else 0)
            self._verdicts[key] = t.verdict
        effects = {
            row["feature"]: row["effect_size"]
            for row in report["features"]
            if row["effect_size"] is not None
        }
        for feature, value in effects.items():
            m.transition_effect.labels(*key, feature).set(value)
        stale = self._effects.get(key, set()) - effects.keys()
        if stale:
            m.remove_transition(*key, stale, verdicts=False)
        self._effects[key] = set(effects)
        self._alert(key, t, alert)

    def _expire_alerts(self) -> None:
        """Resolve the alerts that have fired for ``transitions.alert_hours``: a verdict is
        news, not a state to page on forever (the changelog and the metric keep it); a new
        verdict of the transition fires again."""
        now = self.clock()
        for key, firing in list(self._firing.items()):
            if now - self._fired_at.get(key, now) >= self.alert_seconds:
                self.alerts.resolve_alert(firing)
                del self._firing[key]
                self._expired[key] = firing

    def _alert(self, key: TransitionKey, t: Transition, changed: bool) -> None:
        """Fire, move or resolve the key's alert; a firing alert is sent again (new
        annotations) only when ``changed``: the sender re-sends it meanwhile."""
        severity = self.severity.get(t.verdict) if t.verdict in ALERTING else None
        firing = self._firing.get(key)
        wanted = None if severity is None else (TRANSITION_ALERTNAME, *key, severity)
        if wanted is not None and self._expired.get(key) == wanted:
            return  # told for transitions.alert_hours already; a new verdict fires again
        self._expired.pop(key, None)
        if firing == wanted and not changed:
            return
        if firing is not None and firing != wanted:
            # Another severity is another alert in Alertmanager: end the old one.
            self.alerts.resolve_alert(firing)
            del self._firing[key]
        if wanted is None or severity is None:
            return
        endpoint, from_model, to_model = key
        labels = {
            **self.static_labels,
            "alertname": TRANSITION_ALERTNAME,
            "endpoint": endpoint,
            "from_model": from_model,
            "to_model": to_model,
            "severity": severity,
        }
        annotations = {
            "summary": f"{endpoint}: {from_model} → {to_model} is {t.verdict} ({t.semver})",
            "description": t.summary(),
            "verdict": t.verdict,
            "semver": t.semver or "",
            "confounded": "true" if t.confounded else "false",
            "mode": t.mode,
        }
        self.alerts.fire_alert(wanted, labels, annotations, self.clock())
        if self._firing.get(key) != wanted:
            self._fired_at[key] = self.clock()
        self._firing[key] = wanted

    def _produce(
        self, tp: TopicPartition, state: PartitionState, view: _View, report: dict[str, Any]
    ) -> None:
        if not self.topic:
            return
        producer = self.producer()
        if producer is None:
            return
        offset = state.next_offset if state.next_offset is not None else -1
        # The record reflects every input record before next_offset of its partition.
        value = json.dumps({**report, "next_offset": offset}, sort_keys=True).encode()
        kafka_io.send_detection(
            producer,
            self.topic,
            key=report["endpoint"].encode(),
            value=value,
            on_error=kafka_io.produce_failed(
                self.metrics, self.topic, tp.topic, tp.partition, offset
            ),
        )

    def _list(self) -> tuple[dict[str, Any], ...]:
        """Every shown report, oldest first (by opening time, else by first sight)."""
        items: list[tuple[Any, dict[str, Any]]] = []
        for tp, view in self._views.items():
            for number, (_, report) in view.shown.items():
                opened = report.get("opened_at")
                order = (opened is None, opened or 0.0, self._seq.get((tp, number), 0))
                items.append((order, report))
        items.sort(key=lambda item: item[0])
        return tuple(report for _, report in items)


def _stamp(t: Transition) -> Stamp:
    return (t.new_events, t.old_events, t.verdict, t.confounded, t.mode, t.closed)


def _tracker(state: PartitionState | None) -> TransitionTracker | None:
    return None if state is None else state.pipeline.transitions
