"""``driftmon run``: the Kafka daemon around the core.

One Pipeline (and so one Monitor) per assigned partition, checkpointed with the offset it
reflects. The loop polls a batch, processes it, updates metrics and alerts once per batch,
and checkpoints every N events or T seconds, on revoke and on shutdown.

Exit codes: 0 after a clean stop (SIGTERM or SIGINT, at any moment, bootstrap included);
1 on a fatal error (Kafka still failing after ``KAFKA_RETRY_DEADLINE_SECONDS`` of retries,
``state.dir`` no longer readable or writable, an unexpected exception); 2 on a
configuration error found at start-up. Every fatal path logs one JSON line with its cause
and closes the consumer.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

import structlog
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from driftmon import kafka as kafka_io
from driftmon.alertmanager import AlertSender
from driftmon.checkpoint import (
    ActiveDrift,
    Checkpoint,
    CheckpointDirectoryError,
    CheckpointStore,
    DirectoryCheckpointStore,
)
from driftmon.core import compiled_label
from driftmon.core.detectors import DETECTORS
from driftmon.core.embeddings import Vector
from driftmon.core.events import Event
from driftmon.core.features import FeatureExtractor
from driftmon.core.monitor import Detection, Monitor
from driftmon.core.pipeline import Pipeline
from driftmon.metrics import Metrics, serve
from driftmon.settings import Settings

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_CONFIG = 0, 1, 2
SHUTDOWN_TIMEOUT = 30.0
METRICS_REFRESH_SECONDS = 5.0
# How long a retriable Kafka error (broker down, coordinator moving, request timed out) is
# retried, with exponential back-off, before the daemon gives up: bootstrap, offset commits,
# producer flushes, offset look-ups.
KAFKA_RETRY_DEADLINE_SECONDS = 300.0
RETRY_BACKOFF_SECONDS = (0.5, 10.0)  # first and longest pause between attempts
PRODUCER_FLUSH_TIMEOUT = 30.0
COMMIT_ATTEMPT_TIMEOUT_MS = 10_000  # kafka-python retries inside one attempt until then

T = TypeVar("T")


@dataclass
class PartitionState:
    pipeline: Pipeline
    next_offset: int | None = None
    events_since_checkpoint: int = 0
    # (endpoint, model, feature) → its detection, while the alert fires; checkpointed
    active_drifts: dict[tuple[str, str, str], ActiveDrift] = field(default_factory=dict)
    drifts_changed: bool = False  # since the last checkpoint
    topic_id: str | None = None  # of the data the state reflects, when the broker says


class _EmbeddingPath:
    """Sampled outputs go to a background worker through a bounded queue; consumption
    never waits for it. Embeddings still in flight at a checkpoint are not part of the
    saved state (they are a sample; after a crash the re-read records are sampled anew)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        from driftmon.embedding import EmbeddingWorker, Sampler, load_embedder, resolve_model

        def on_batch(n: int, seconds: float) -> None:
            metrics.embeddings.inc(n)
            metrics.embedding_duration.observe(seconds)

        self.metrics = metrics
        self._skipped_budget = self._dropped = self._failed = 0
        self.sampler = Sampler.from_settings(settings.embeddings)
        self.worker: EmbeddingWorker[tuple[TopicPartition, str, str], tuple[int, float | None]]
        resolve_model(settings.embeddings.model)  # a missing model fails here, at once
        # The worker process loads the model itself (see EmbeddingWorker).
        self.worker = EmbeddingWorker.from_settings(
            functools.partial(
                load_embedder, settings.embeddings, threads=settings.embeddings.threads
            ),
            settings.embeddings,
            on_batch=on_batch,
        )

        self.worker_exited: str | None = None

    def submit(self, tp: TopicPartition, event: Event, offset: int, ts: float | None) -> None:
        if self.worker_exited is not None:
            self.metrics.embeddings_skipped.labels("worker_exited").inc()
            return
        self.worker.submit((tp, event.endpoint, event.model), (offset, ts), event.output)

    def drain(
        self,
    ) -> list[tuple[TopicPartition, str, str, int, float | None, Vector]]:
        now = time.monotonic()
        stats = self.worker.stats()
        self.sampler.report_backlog(stats.backlog, self.worker.capacity, now)
        m = self.metrics
        m.embedding_sample_ratio.set(self.sampler.ratio)
        m.embedding_queue.set(stats.backlog)
        # Counters take increments; the sampler and the worker keep running totals.
        budget, full = self.sampler.skipped_budget, stats.dropped
        if budget > self._skipped_budget:
            m.embeddings_skipped.labels("budget").inc(budget - self._skipped_budget)
        if full > self._dropped:
            m.embeddings_skipped.labels("queue_full").inc(full - self._dropped)
        if stats.failed > self._failed:
            m.embeddings_skipped.labels("encode_error").inc(stats.failed - self._failed)
            log.warning(
                "embedding batch failed, skipped",
                texts=stats.failed - self._failed,
                error=self.worker.last_error,
            )
        self._skipped_budget, self._dropped, self._failed = budget, full, stats.failed
        if self.worker_exited is not None:
            return []
        try:
            done = self.worker.drain()
        except RuntimeError as exc:  # the child died (OOM-killed, say): ingestion goes on
            self.worker_exited = str(exc)
            log.error(
                "embedding worker exited; embeddings are off until driftmon restarts",
                error=self.worker_exited,
            )
            return []
        return [
            (tp, ep, model, offset, ts, vector) for (tp, ep, model), (offset, ts), vector in done
        ]


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread, where blocking consumer calls are refused: the
    daemon's handlers only touch local state, files and non-blocking consumer calls."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._call(self.daemon.partitions_revoked, revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._call(self.daemon.partitions_assigned, assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._call(self.daemon.partitions_lost, lost)

    def _call(
        self, handler: Callable[[set[TopicPartition]], None], tps: set[TopicPartition]
    ) -> None:
        # kafka-python would wrap an error in a generic KafkaError and log a traceback: the
        # main loop raises the original instead, after poll() returns.
        try:
            handler(tps)
        except Exception as exc:
            if self.daemon.listener_error is None:
                self.daemon.listener_error = exc


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        store: CheckpointStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.store = store or DirectoryCheckpointStore(settings.state.dir)
        self.alerts = AlertSender(settings.alertmanager, self.metrics, clock=clock)
        self.extractor = FeatureExtractor(settings)
        self._embedding: _EmbeddingPath | None = (
            _EmbeddingPath(settings, self.metrics) if settings.embeddings.enabled else None
        )
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.should_exit = False
        self.on_detection: Callable[[Detection], None] | None = None
        self._last_poll = 0.0
        self._last_checkpoint = time.monotonic()
        self._last_refresh = 0.0
        self._consumer: Any = None
        self._producer: Any = None
        # Assigned partitions whose restored offset is not yet checked against the log: paused
        # until the main loop has looked (the rebalance listener may not make blocking calls).
        self._unverified: set[TopicPartition] = set()
        # (endpoint, model) → the (feature, detector) pairs that have drift series
        # (detections, drift flag, last detection time): the only per-key series removed
        # when a key leaves, so that eviction costs nothing for keys that never drifted.
        self._drift_series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        # Accepted events per key since this process started (driftmon_events_total): not
        # the checkpointed KeyState.events, which would step back after a crash and read
        # as a counter reset. Entries leave with their key.
        self._key_events: dict[tuple[str, str], int] = {}
        self.listener_error: Exception | None = None  # raised by the main loop
        self._state_failed = False  # state.dir unusable: no final checkpoint

    # -- signals and health -----------------------------------------------------------
    def request_exit(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self.should_exit = True

    def ready(self) -> bool:
        """Polling, owning partitions, and every partition able to make progress (its offset
        checked against the log)."""
        return (
            bool(self.partitions)
            and not self._unverified
            and time.monotonic() - self._last_poll < 30.0
        )

    def monitors(self) -> Iterator[tuple[TopicPartition, Monitor]]:
        for tp, state in list(self.partitions.items()):
            yield tp, state.pipeline.monitor

    # -- rebalancing ----------------------------------------------------------------
    def _new_state(self) -> PartitionState:
        sampler = self._embedding.sampler if self._embedding else None
        return PartitionState(
            Pipeline(
                self.settings,
                extractor=self.extractor,
                sampler=sampler,
                sampler_clock=time.monotonic,
            )
        )

    def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in sorted(assigned):
            state = self._new_state()
            ckpt = self.store.load(tp.topic, tp.partition)
            if ckpt is not None:
                try:
                    state.pipeline.monitor.restore(ckpt.state)
                except ValueError as exc:
                    log.warning(
                        "checkpoint not usable, starting fresh",
                        topic=tp.topic,
                        partition=tp.partition,
                        error=str(exc),
                    )
                    ckpt = None
            if ckpt is not None:
                # The state reflects every record before ckpt.offset: resume exactly there.
                self._consumer.seek(tp, ckpt.offset)
                state.next_offset = ckpt.offset
                state.topic_id = ckpt.topic_id
                for drift in ckpt.drifts:
                    self._activate(drift, state)
                state.drifts_changed = False  # as saved
            self.partitions[tp] = state
            self._consumer.pause(tp)
            self._unverified.add(tp)
            log.info(
                "partition assigned",
                topic=tp.topic,
                partition=tp.partition,
                restored_offset=ckpt.offset if ckpt else None,
                active_drifts=len(ckpt.drifts) if ckpt else 0,
            )

    def _activate(self, drift: ActiveDrift, state: PartitionState) -> None:
        """Mark a drift active and fire its alert: on detection, and for a drift active in
        a restored checkpoint (same startsAt, so Alertmanager sees the alert continue; it
        resolves once its feature is quiet, as if the daemon had never stopped)."""
        m = self.metrics
        labels = drift.key
        state.active_drifts[labels] = drift
        state.drifts_changed = True
        # Value and baseline with the drift flag, not at the next refresh: rules that
        # describe an active drift read them together.
        m.key_series.pin(labels, drift.current, drift.baseline)
        m.drift_active.labels(*labels).set(1)
        self._drift_series.setdefault((drift.endpoint, drift.model), set()).add(
            (drift.feature, drift.detector)
        )
        # Wall time, not event time: rules and dashboards compare it with time().
        m.last_detection_timestamp.labels(*labels).set(drift.since)
        self.alerts.fire(
            drift.endpoint,
            drift.model,
            drift.feature,
            detector=drift.detector,
            baseline=drift.baseline,
            current=drift.current,
            key_events=drift.key_events,
            events_since_onset=drift.events_since_onset,
            detected_at=drift.detected_at,
        )

    def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        owned = [tp for tp in revoked if tp in self.partitions]
        self.checkpoint(owned, blocking_commit=False)
        for tp in owned:
            self._drop(tp)

    def partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Another member may own these now: drop without saving or committing.
        for tp in lost:
            if tp in self.partitions:
                self._drop(tp)

    def _drop(self, tp: TopicPartition) -> None:
        self._unverified.discard(tp)
        state = self.partitions.pop(tp)
        for key in state.pipeline.monitor.key_states():
            self._remove_key_series(key.endpoint, key.model)
        # Not ours to re-send or resolve any more: they expire unless the new owner fires
        # (or another partition of ours still has the same drift active).
        for ep, model, feature in state.active_drifts:
            if not self._drift_elsewhere((ep, model, feature)):
                self.alerts.forget(ep, model, feature)
        self.metrics.remove_partition_lag(tp.topic, tp.partition)

    # A key whose records are spread over several partitions (unkeyed producers) has a
    # monitor in each: its series and its alerts are shared, so they go only when no
    # partition of this process still has the key (or the drift).
    def _key_elsewhere(self, endpoint: str, model: str) -> bool:
        return any(s.pipeline.monitor.get(endpoint, model) for s in self.partitions.values())

    def _drift_elsewhere(self, drift: tuple[str, str, str]) -> bool:
        return any(drift in s.active_drifts for s in self.partitions.values())

    def _remove_key_series(self, endpoint: str, model: str) -> None:
        """Drop the drift series of a key that left (evicted, partition dropped). O(1) for
        the many keys that never drifted: their other series are in the KeySeries
        snapshot, which the next refresh publishes without them."""
        series = self._drift_series.get((endpoint, model))
        if self._key_elsewhere(endpoint, model):
            return
        self._key_events.pop((endpoint, model), None)
        if series is None:
            return
        del self._drift_series[(endpoint, model)]
        self.metrics.remove_key(endpoint, model, {f for f, _ in series}, {d for _, d in series})

    # -- offsets that match the log ----------------------------------------------------
    # A broker whose data was reset, a topic deleted and created again, or retention that
    # passed a lagging offset leaves a restored offset outside the partition's log. Kafka
    # brokers answer such a fetch with OFFSET_OUT_OF_RANGE (kafka-python then jumps by
    # auto_offset_reset, so records arrive below the expected offset); some brokers (tansu)
    # return nothing, with a high watermark below the position. Either way the state no
    # longer matches the data: the partition starts cold.
    def _verify_assigned(self) -> None:
        """Check restored offsets against the log start and the topic id, then resume."""
        pending = sorted(tp for tp in self._unverified if tp in self.partitions)
        if not pending:
            return
        starts = self._retry("metadata", lambda: self._consumer.beginning_offsets(pending))
        for tp in pending:
            state = self.partitions.get(tp)
            if state is None or tp not in self._unverified:  # revoked meanwhile
                continue
            current_id = kafka_io.topic_id(self._consumer, tp.topic)
            start = starts.get(tp)
            offset = state.next_offset
            if offset is not None and state.topic_id and current_id not in (None, state.topic_id):
                self._reset(tp, "topic_recreated", log_start=start, log_end=None, seek=True)
            elif offset is not None and start is not None and offset < start:
                self._reset(tp, "before_start", log_start=start, log_end=None, seek=True)
            else:
                state.topic_id = current_id
            self._unverified.discard(tp)
            self._consumer.resume(tp)

    def _check_positions(self) -> set[TopicPartition]:
        """After a poll: partitions whose topic was recreated or whose log now ends below
        their offset are reset; returns them (records of this poll for them are stale)."""
        reset = set()
        for tp, state in list(self.partitions.items()):
            if tp in self._unverified:
                continue
            current_id = kafka_io.topic_id(self._consumer, tp.topic)
            if current_id is not None and current_id != state.topic_id:
                if state.topic_id is not None and state.next_offset is not None:
                    self._reset(tp, "topic_recreated", log_start=None, log_end=None, seek=True)
                    reset.add(tp)
                    continue
                state.topic_id = current_id
            if state.next_offset is None:
                continue
            try:
                high = self._consumer.highwater(tp)
            except IllegalStateError:  # no longer assigned; the listener drops it
                continue
            if high is not None and high < state.next_offset:
                self._reset(tp, "beyond_end", log_start=None, log_end=high, seek=True)
                reset.add(tp)
        return reset

    def _reset(
        self,
        tp: TopicPartition,
        reason: str,
        *,
        log_start: int | None,
        log_end: int | None,
        seek: bool,
    ) -> PartitionState:
        """Start the partition cold where auto_offset_reset says (``seek``; else kafka-python
        already moved it). Its drifts were found in data that is gone: their alerts are
        forgotten (they expire), not resolved, and come back if the new data drifts too."""
        old = self.partitions[tp]
        policy = self.settings.kafka.auto_offset_reset
        log.warning(
            "offset outside the partition's log; starting the partition cold",
            topic=tp.topic,
            partition=tp.partition,
            reason=reason,
            offset=old.next_offset,
            log_start=log_start,
            log_end=log_end,
            lag=log_end - old.next_offset
            if log_end is not None and old.next_offset is not None
            else None,
            auto_offset_reset=policy,
            active_drifts_dropped=len(old.active_drifts),
        )
        self.metrics.offset_resets.labels(reason).inc()
        self._drop(tp)
        state = self._new_state()
        state.topic_id = kafka_io.topic_id(self._consumer, tp.topic)
        self.partitions[tp] = state
        if seek:
            if policy == "earliest":
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
        return state

    # -- retries --------------------------------------------------------------------
    def _retry(self, operation: str, call: Callable[[], T]) -> T:
        """``call()``, retried on retriable Kafka errors with back-off until
        ``KAFKA_RETRY_DEADLINE_SECONDS``; then (or once an exit is requested) the error is
        raised."""
        deadline = time.monotonic() + KAFKA_RETRY_DEADLINE_SECONDS
        pause, longest = RETRY_BACKOFF_SECONDS
        while True:
            try:
                return call()
            except KafkaError as exc:
                if (
                    not kafka_io.retriable(exc)
                    or self.should_exit
                    or time.monotonic() + pause > deadline
                ):
                    raise
                self.metrics.kafka_retries.labels(operation).inc()
                log.warning(
                    "kafka operation failed, retrying",
                    operation=operation,
                    error=str(exc)[:300],
                    retry_in=pause,
                    gives_up_in=round(deadline - time.monotonic()),
                )
            end = time.monotonic() + pause
            while not self.should_exit and time.monotonic() < end:
                time.sleep(min(0.2, end - time.monotonic()))
            pause = min(pause * 2, longest)

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint(
        self, tps: list[TopicPartition] | None = None, *, blocking_commit: bool = True
    ) -> None:
        """Flush outputs, write state atomically, then commit offsets — in that order.

        Inside a rebalance callback the commit is sent without waiting: the state file
        already holds the offset, so a lost commit costs re-reading, never state.
        """
        # A partition with no new records or drift changes since its last checkpoint is
        # already saved.
        targets = [
            tp
            for tp in (tps if tps is not None else list(self.partitions))
            if tp in self.partitions
            and self.partitions[tp].next_offset is not None
            and (
                self.partitions[tp].events_since_checkpoint > 0
                or self.partitions[tp].drifts_changed
            )
        ]
        if not targets:
            return
        # Dead letters and detections of the checkpointed records must be durable first.
        if blocking_commit:
            self._retry("produce", lambda: self._producer.flush(timeout=PRODUCER_FLUSH_TIMEOUT))
        else:
            # In a rebalance callback (kafka-python's IO thread): no waiting out an outage.
            # Unsaved, the records are re-read from the last checkpoint: nothing is lost.
            try:
                self._producer.flush(timeout=PRODUCER_FLUSH_TIMEOUT)
            except KafkaError as exc:
                log.warning("checkpoint skipped: producer flush failed", error=str(exc)[:300])
                return
        now = self.clock()
        offsets = {}
        for tp in targets:
            state = self.partitions[tp]
            assert state.next_offset is not None
            self.store.save(
                Checkpoint(
                    tp.topic,
                    tp.partition,
                    state.next_offset,
                    state.pipeline.monitor.snapshot(),
                    now,
                    tuple(state.active_drifts.values()),
                    state.topic_id,
                )
            )
            state.events_since_checkpoint = 0
            state.drifts_changed = False
            offsets[tp] = OffsetAndMetadata(state.next_offset, "", -1)
        try:
            if blocking_commit:
                self._retry(
                    "commit",
                    lambda: self._consumer.commit(offsets, timeout_ms=COMMIT_ATTEMPT_TIMEOUT_MS),
                )
            else:
                self._consumer.commit_async(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            # The state file already holds the offset; the next owner resumes from it
            # (here) or from the last committed offset with fresh state (elsewhere).
            log.warning("offset commit failed", error=type(exc).__name__)
        self.metrics.checkpoints.inc()
        self._last_checkpoint = time.monotonic()
        log.info(
            "checkpoint",
            partitions={f"{tp.topic}-{tp.partition}": o.offset for tp, o in offsets.items()},
        )

    def _checkpoint_due(self) -> bool:
        s = self.settings.state
        return any(
            p.events_since_checkpoint >= s.checkpoint_every_events for p in self.partitions.values()
        ) or (time.monotonic() - self._last_checkpoint >= s.checkpoint_every_seconds)

    # -- processing -----------------------------------------------------------------
    def process_batch(self, batch: dict[TopicPartition, list[Any]]) -> int:
        key_counts: Counter[tuple[str, str]] = Counter()
        n = 0
        for tp, records in batch.items():
            state = self.partitions.get(tp)
            if state is None:
                continue
            if records and state.next_offset is not None and records[0].offset < state.next_offset:
                # kafka-python found the offset out of range and moved by auto_offset_reset.
                state = self._reset(tp, "beyond_end", log_start=None, log_end=None, seek=False)
            process = state.pipeline.process
            dead_letters = self.settings.kafka.dead_letter_topic
            max_bytes = self.settings.kafka.max_message_bytes
            for rec in records:
                ts = rec.timestamp / 1000.0 if rec.timestamp and rec.timestamp > 0 else None
                out = process(rec.value if rec.value is not None else b"", rec.offset, ts)
                # The state now holds this record: move its offset with it, so that a
                # checkpoint taken after an error later in the batch stays exact.
                state.next_offset = rec.offset + 1
                state.events_since_checkpoint += 1
                n += 1
                if out.rejection is not None:
                    self.metrics.events_rejected.labels(out.rejection.reason).inc()
                    kafka_io.send_dead_letter(
                        self._producer,
                        dead_letters,
                        value=rec.value,
                        key=rec.key,
                        rejection=out.rejection,
                        source_topic=tp.topic,
                        partition=tp.partition,
                        offset=rec.offset,
                        max_value_bytes=max_bytes,
                        on_error=self._produce_failed(dead_letters, tp, rec.offset),
                    )
                elif out.event is not None:
                    key_counts[(out.event.endpoint, out.event.model)] += 1
                    if out.embed and self._embedding is not None:
                        self._embedding.submit(tp, out.event, rec.offset, ts)
                for det in out.detections:
                    self._detected(tp, rec.offset, det, state)
        if key_counts:
            per_key = self._key_events
            for key, count in key_counts.items():
                per_key[key] = per_key.get(key, 0) + count
            self.metrics.events_accepted.inc(sum(key_counts.values()))
        return n

    def _produce_failed(
        self, topic: str, tp: TopicPartition, offset: int
    ) -> Callable[[BaseException], None]:
        """Count and log a dead letter or detection the producer could not deliver (may
        run on the producer's thread; never logs the record itself)."""

        def failed(exc: BaseException) -> None:
            self.metrics.produce_failed.labels(topic).inc()
            log.warning(
                "produce failed",
                topic=topic,
                source_topic=tp.topic,
                source_partition=tp.partition,
                source_offset=offset,
                error=repr(exc)[:300],
            )

        return failed

    def _detected(
        self, tp: TopicPartition, offset: int, det: Detection, state: PartitionState
    ) -> None:
        m = self.metrics
        now = self.clock()
        ts = det.timestamp if det.timestamp is not None else now
        m.drift_detections.labels(det.endpoint, det.model, det.feature, det.detector).inc()
        drift = ActiveDrift(
            endpoint=det.endpoint,
            model=det.model,
            feature=det.feature,
            detector=det.detector,
            baseline=det.baseline,
            current=det.current,
            key_events=det.key_events,
            events_since_onset=det.events_since_onset,
            detected_at=ts,
            since=now,
        )
        self._activate(drift, state)
        topic = self.settings.kafka.detections_topic
        kafka_io.send_detection(
            self._producer,
            topic,
            key=f"{det.endpoint}|{det.model}".encode(),
            value=kafka_io.detection_record(
                det, topic=tp.topic, partition=tp.partition, offset=offset
            ),
            on_error=self._produce_failed(topic, tp, offset),
        )
        log.info(
            "drift detected",
            endpoint=det.endpoint,
            model=det.model,
            feature=det.feature,
            detector=det.detector,
            baseline=round(det.baseline, 4),
            current=round(det.current, 4),
            events_since_onset=det.events_since_onset,
            partition=tp.partition,
            offset=offset,
        )
        if self.on_detection is not None:
            self.on_detection(det)

    def _apply_embeddings(self) -> None:
        """Feed finished embeddings to their partition's monitor (main thread only)."""
        assert self._embedding is not None
        for tp, endpoint, model, offset, ts, vector in self._embedding.drain():
            state = self.partitions.get(tp)
            if state is None:  # revoked meanwhile: the new owner samples its own
                continue
            for det in state.pipeline.process_embedding(endpoint, model, vector, offset, ts):
                self._detected(tp, offset, det, state)

    def refresh_metrics(self) -> None:
        """Gauges and resolutions, at most every few seconds: never per event."""
        m = self.metrics
        quiet_after = self.settings.alertmanager.resolve_after_quiet_events
        min_active = self.settings.alertmanager.min_active_seconds
        warmup = self.settings.detectors.warmup_events
        now = self.clock()
        n_keys = 0
        # The per-key series as they are now (driftmon.keyseries): evicted keys are simply
        # not in it, so key churn costs nothing here beyond the keys that drifted.
        features: dict[tuple[str, str, str], tuple[float, float]] = {}
        detectors: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        for tp, state in self.partitions.items():
            monitor = state.pipeline.monitor
            n_keys += len(monitor)
            evicted = monitor.drain_evicted()
            for ep, model in evicted:
                self._remove_key_series(ep, model)
                if self._embedding is not None:
                    self._embedding.sampler.forget((ep, model))
            if evicted:
                m.keys_evicted.inc(len(evicted))
            active = state.active_drifts
            shown = monitor.recent_key_states(self.settings.metrics.max_detail_keys)
            shown_ids = {(k.endpoint, k.model) for k in shown}
            for ep, model in {(ep, model) for ep, model, _ in active} - shown_ids:
                drifting = monitor.get(ep, model)
                if drifting is not None:
                    shown.append(drifting)
                    shown_ids.add((ep, model))
            for key in shown:
                for name, stream in key.streams.items():
                    labels = (key.endpoint, key.model, name)
                    drift = active.get(labels)
                    # While a drift is active, show the baseline it was detected against,
                    # not the one being re-learned from post-change data.
                    features[labels] = (
                        key.display(name, stream.current),
                        key.display(name, stream.baseline) if drift is None else drift.baseline,
                    )
                    stats = stream.statistics()
                    for det in DETECTORS:  # NaN while re-learning: no detector runs
                        detectors[(*labels, det)] = stats.get(det, (math.nan, math.nan))
            for labels, drift in active.items():  # e.g. the MEWMA's "embedding": no stream
                features.setdefault(labels, (drift.current, drift.baseline))
            for (ep, model, feature), drift in list(active.items()):
                key_state = monitor.get(ep, model)
                if feature == "embedding":  # the MEWMA: quiet once re-fitted, re-calibrated
                    emb = key_state.embedding if key_state else None
                    quiet = emb is None or emb.mewma is not None
                else:
                    watched = key_state.streams.get(feature) if key_state else None
                    quiet = watched is None or (
                        not watched.learning
                        and watched.events_since_detection >= warmup + quiet_after
                    )
                # A backfill can be quiet again within a second: keep the drift visible
                # long enough for Prometheus to scrape it.
                if quiet and now - drift.since >= min_active:
                    del active[(ep, model, feature)]
                    state.drifts_changed = True
                    if not self._drift_elsewhere((ep, model, feature)):
                        m.drift_active.labels(ep, model, feature).set(0)
                        self.alerts.resolve(ep, model, feature)
            try:
                high = self._consumer.highwater(tp)
            except IllegalStateError:  # no longer assigned; the listener drops it
                high = None
            pos = state.next_offset
            if high is not None and pos is not None:
                # Negative when the log ends below the position (a reset broker): shown.
                m.consumer_lag.labels(tp.topic, str(tp.partition)).set(high - pos)
        m.keys.set(n_keys)
        # Every key still counted is monitored: evicted and dropped ones were removed above.
        events = dict(self._key_events)
        m.key_series.publish(events, features, detectors)

    # -- lifecycle ------------------------------------------------------------------
    def run(self) -> int:
        k = self.settings.kafka
        server, _ = serve(
            self.registry, self.settings.metrics.host, self.settings.metrics.port, self.ready
        )
        log.info(
            "starting",
            bootstrap=k.bootstrap_servers,
            topics=k.topics,
            group=k.group_id,
            metrics_port=server.server_address[1],
            compiled_core=compiled_label(),
        )
        code = EXIT_OK
        try:
            if self._connect():
                kafka_io.subscribe(self._consumer, k.topics, _Listener(self))
                self._loop()
        except CheckpointDirectoryError as exc:
            self._state_failed = True
            log.error(
                "stopping: state.dir unusable",
                error=str(exc),
                hint="free space or fix state.dir; the daemon resumes from its last checkpoint",
            )
            code = EXIT_FATAL
        except KafkaError as exc:
            log.error(
                "stopping: kafka error",
                error=str(exc)[:500],
                retriable=kafka_io.retriable(exc),
                retried_for_seconds=KAFKA_RETRY_DEADLINE_SECONDS if kafka_io.retriable(exc) else 0,
            )
            code = EXIT_FATAL
        except Exception as exc:
            log.error("stopping: unexpected error", error=repr(exc)[:500], exc_info=True)
            code = EXIT_FATAL
        finally:
            self._shutdown(server, code)
        return code

    def _connect(self) -> bool:
        """Producer and consumer, built on a helper thread so that a signal ends the wait
        for an unreachable broker; False when an exit was requested first."""
        k = self.settings.kafka
        timeout_ms = int(KAFKA_RETRY_DEADLINE_SECONDS * 1000)
        built: dict[str, Any] = {}

        def build() -> None:
            try:
                built["producer"] = kafka_io.make_producer(k, bootstrap_timeout_ms=timeout_ms)
                built["consumer"] = kafka_io.make_consumer(k, bootstrap_timeout_ms=timeout_ms)
            except BaseException as exc:  # re-raised on the main thread
                built["error"] = exc

        worker = threading.Thread(target=build, name="driftmon-kafka-connect", daemon=True)
        worker.start()
        while worker.is_alive():
            if self.should_exit:
                log.info("exit requested while connecting to kafka")
                return False
            worker.join(timeout=0.2)
        if "error" in built:
            raise built["error"]
        self._producer, self._consumer = built["producer"], built["consumer"]
        return True

    def _loop(self) -> None:
        k = self.settings.kafka
        while not self.should_exit:
            batch = self._consumer.poll(
                timeout_ms=k.poll_timeout_ms, max_records=k.max_poll_records
            )
            self._last_poll = time.monotonic()
            if self.listener_error is not None:
                raise self.listener_error
            self._verify_assigned()
            stale = self._check_positions()
            if batch:
                n = self.process_batch(
                    {tp: r for tp, r in batch.items() if tp not in stale} if stale else batch
                )
                log.debug("batch", records=n)
            if self._embedding is not None:
                self._apply_embeddings()
            now = time.monotonic()
            if now - self._last_refresh >= METRICS_REFRESH_SECONDS:
                self.refresh_metrics()
                self._last_refresh = now
            self.alerts.tick()
            if self._checkpoint_due():
                self.checkpoint()

    def _shutdown(self, server: Any, code: int) -> None:
        """Save what can be saved and close everything; never raises (a failure here is
        logged as one line and the exit code stands)."""
        watchdog = threading.Timer(SHUTDOWN_TIMEOUT, lambda: os._exit(EXIT_FATAL))
        watchdog.daemon = True
        watchdog.start()
        self.should_exit = True  # retries give up at once from here on
        steps: list[tuple[str, Callable[[], object]]] = []
        if self._consumer is not None:
            steps.append(("refresh metrics", self.refresh_metrics))
            if not self._state_failed:
                steps.append(("final checkpoint", self.checkpoint))
            # Everything is saved and committed (or cannot be): the revoke callback of close()
            # has nothing left to do.
            steps.append(("clear partitions", self.partitions.clear))
            steps.append(("close consumer", lambda: self._consumer.close(autocommit=False)))
        if self._producer is not None:
            steps.append(("close producer", lambda: self._producer.close(timeout=10)))
        if self._embedding is not None:
            embedding = self._embedding
            steps.append(("close embedding worker", lambda: embedding.worker.close(timeout=5)))
        steps.append(("close alert sender", lambda: self.alerts.close(timeout=5)))
        try:
            for name, step in steps:
                try:
                    step()
                except Exception as exc:
                    log.warning("shutdown step failed", step=name, error=repr(exc)[:300])
        finally:
            server.shutdown()
            server.server_close()
            watchdog.cancel()
            log.info("stopped", exit_code=code)


def run(settings: Settings) -> int:
    """Entry point of ``driftmon run``: signals set the exit flag, the loop ends cleanly.

    The handlers go in first: a signal while the embedding model loads or the broker is
    unreachable still stops the daemon cleanly, with exit code 0.
    """
    from driftmon.embedding import EmbeddingUnavailable

    early: list[int] = []

    def before_daemon(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    signal.signal(signal.SIGTERM, before_daemon)
    signal.signal(signal.SIGINT, before_daemon)
    try:
        daemon = Daemon(settings)
    except EmbeddingUnavailable as exc:
        log.error(
            "embeddings unavailable",
            error=str(exc),
            hint="install them or set DRIFTMON_EMBEDDINGS__ENABLED=false",
        )
        return EXIT_CONFIG
    except CheckpointDirectoryError as exc:
        log.error("state.dir unusable", error=str(exc), hint="set state.dir to a writable volume")
        return EXIT_CONFIG
    signal.signal(signal.SIGTERM, daemon.request_exit)
    signal.signal(signal.SIGINT, daemon.request_exit)
    if early:
        daemon.request_exit()
    return daemon.run()
