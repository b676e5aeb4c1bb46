"""The assigned partitions: their state, rebalances, offset checks and checkpoints.

One Pipeline (and so one Monitor and one DriftTracker) per assigned partition,
checkpointed with the offset it reflects. The order is fixed: outputs flushed, state
written, then offsets committed. On revoke: checkpoint, then commit. On lost: drop without
saving or committing (another member may own the partition already).

A store that talks to Kafka (``state.backend: kafka``) is read on the main thread, before the
paused partition resumes: the rebalance callback must not wait on another client. Records
after a restored checkpoint are read again; the detections the previous owner already
emitted for them (read back from the detections topic) are not emitted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

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

from driftmon import kafka as kafka_io
from driftmon.checkpoint import Checkpoint, CheckpointStore, CorruptCheckpointError
from driftmon.core.drifts import ActiveDrift, DriftTracker
from driftmon.core.pipeline import Pipeline
from driftmon.metrics import Metrics
from driftmon.settings import Settings

log = structlog.get_logger(__name__)

COMMIT_ATTEMPT_TIMEOUT_MS: Final = 10_000  # kafka-python retries inside one attempt until then

T = TypeVar("T")


@dataclass
class PartitionState:
    pipeline: Pipeline
    next_offset: int | None = None
    events_since_checkpoint: int = 0
    # (endpoint, model, feature) → its detection, while the drift is active; checkpointed
    drifts: DriftTracker = field(default_factory=DriftTracker)
    topic_id: str | None = None  # of the data the state reflects, when the broker says
    # Detections already emitted (by this or an earlier owner) for records after the restored
    # checkpoint: re-detected while those records are read again, they are not re-emitted.
    # id → its record's offset; bounded: ids before the next checkpoint's offset go then.
    emitted_ids: dict[str, int] = field(default_factory=dict)


class Owner(Protocol):
    """What the partitions need from the records' processing (driftmon.processing)."""

    def new_state(self) -> PartitionState: ...
    def activate(self, drift: ActiveDrift, state: PartitionState) -> None: ...
    def dropped(self, state: PartitionState) -> None: ...
    def flush_outputs(self) -> None: ...


class Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread, where blocking consumer calls are refused: the
    handlers only touch local state, files and non-blocking consumer calls."""

    def __init__(self, partitions: Partitions) -> None:
        self.partitions = partitions

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._call(self.partitions.revoked, revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._call(self.partitions.assigned, assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._call(self.partitions.lost, lost)

    def _call(
        self, handler: Callable[[set[TopicPartition]], None], tps: set[TopicPartition]
    ) -> None:
        # kafka-python would wrap an error in a generic KafkaError and log a traceback: the
        # main loop raises the original instead, after poll() returns.
        try:
            handler(tps)
        except Exception as exc:
            if self.partitions.listener_error is None:
                self.partitions.listener_error = exc


class Partitions:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: CheckpointStore,
        clock: Callable[[], float],
        stopping: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.owner: Owner  # set by the Processor that owns the partitions' pipelines
        self.clock = clock
        self.stopping = stopping  # retries give up at once when it says so
        self.states: dict[TopicPartition, PartitionState] = {}
        self.consumer: Any = None
        # Assigned partitions whose restored offset is not yet checked against the log: paused
        # until the main loop has looked (the rebalance listener may not make blocking calls).
        self.unverified: set[TopicPartition] = set()
        # Assigned, not yet restored: a remote store is read on the main thread.
        self.unrestored: set[TopicPartition] = set()
        # Looks up the detections already emitted after a restored checkpoint (the daemon's
        # detections topic); None: not looked up.
        self.emitted_lookup: (
            Callable[
                [dict[TopicPartition, tuple[int, float]]], dict[TopicPartition, dict[str, int]]
            ]
            | None
        ) = None
        self.listener_error: Exception | None = None  # raised by the main loop
        # Restored partitions: the checkpoint's offset and time (find_emitted looks there).
        self.restored: dict[TopicPartition, tuple[int, float]] = {}
        self.last_checkpoint = time.monotonic()

    def retry(self, operation: str, call: Callable[[], T]) -> T:
        return kafka_io.retry(operation, call, metrics=self.metrics, stopping=self.stopping)

    # -- rebalancing ----------------------------------------------------------------
    def assigned(self, assigned: set[TopicPartition]) -> None:
        remote = getattr(self.store, "remote", False)
        for tp in sorted(assigned):
            state = self.owner.new_state()
            self.states[tp] = state
            self.consumer.pause(tp)
            self.unverified.add(tp)
            if remote:
                self.unrestored.add(tp)
                log.info("partition assigned", topic=tp.topic, partition=tp.partition)
            else:
                self.restore(tp, state, "partition assigned")

    def restore_assigned(self) -> None:
        """Main thread: restore the partitions a remote store holds, reading it once."""
        pending = sorted(tp for tp in self.unrestored if tp in self.states)
        self.unrestored.clear()
        if not pending:
            return
        prefetch = getattr(self.store, "prefetch", None)
        if prefetch is not None:
            self.retry("state read", lambda: prefetch([(tp.topic, tp.partition) for tp in pending]))
        for tp in pending:
            self.restore(tp, self.states[tp], "partition restored")

    def restore(self, tp: TopicPartition, state: PartitionState, event: str) -> None:
        """Load the partition's checkpoint into ``state`` and seek to its offset; an
        unreadable one (corrupt, another format or detector settings) is counted in
        ``driftmon_offset_resets_total{reason="state_unreadable"}`` and the partition
        starts cold from its committed offset."""
        ckpt: Checkpoint | None
        try:
            ckpt = self.store.load(tp.topic, tp.partition)
            if ckpt is not None:
                state.pipeline.monitor.restore(ckpt.state)
        except ValueError as exc:  # CorruptCheckpointError included
            log.warning(
                "checkpoint not usable, starting fresh",
                topic=tp.topic,
                partition=tp.partition,
                error=str(exc)[:300],
                corrupt=isinstance(exc, CorruptCheckpointError),
            )
            self.metrics.offset_resets.labels("state_unreadable").inc()
            state = self.owner.new_state()  # nothing half-restored
            self.states[tp] = state
            ckpt = None
        if ckpt is not None:
            # The state reflects every record before ckpt.offset: resume exactly there.
            self.consumer.seek(tp, ckpt.offset)
            state.next_offset = ckpt.offset
            state.topic_id = ckpt.topic_id
            for drift in ckpt.drifts:
                self.owner.activate(drift, state)
            state.drifts.saved()  # as saved
            self.restored[tp] = (ckpt.offset, ckpt.written_at)
        log.info(
            event,
            topic=tp.topic,
            partition=tp.partition,
            restored_offset=ckpt.offset if ckpt else None,
            active_drifts=len(ckpt.drifts) if ckpt else 0,
        )

    def find_emitted(self) -> None:
        """Main thread: the detections already emitted after each restored checkpoint."""
        restored, self.restored = self.restored, {}
        restored = {tp: v for tp, v in restored.items() if tp in self.states}
        if not restored or self.emitted_lookup is None:
            return
        lookup = self.emitted_lookup
        try:
            found = self.retry("detections read", lambda: lookup(restored))
        except KafkaError as exc:
            # No read access to the detections topic (an ACL) must not stop monitoring: the
            # detections of the records read again may then be emitted a second time.
            log.warning(
                "detections topic not readable; re-read records may repeat detections",
                error=str(exc)[:300],
            )
            return
        for tp, ids in found.items():
            if tp in self.states:
                self.states[tp].emitted_ids.update(ids)

    def revoked(self, revoked: set[TopicPartition]) -> None:
        owned = [tp for tp in revoked if tp in self.states]
        self.checkpoint(owned, blocking_commit=False)
        for tp in owned:
            self.drop(tp)

    def lost(self, lost: set[TopicPartition]) -> None:
        # Another member may own these now: drop without saving or committing.
        for tp in lost:
            if tp in self.states:
                self.drop(tp)

    def drop(self, tp: TopicPartition) -> None:
        self.unverified.discard(tp)
        self.unrestored.discard(tp)
        self.restored.pop(tp, None)
        self.owner.dropped(self.states.pop(tp))
        self.metrics.remove_partition_lag(tp.topic, tp.partition)

    # -- offsets that match the log ----------------------------------------------------
    # A broker whose data was reset, a topic deleted and created again, or retention that
    # passed a lagging offset leaves a restored offset outside the partition's log. Kafka
    # brokers answer such a fetch with OFFSET_OUT_OF_RANGE (kafka-python then jumps by
    # auto_offset_reset, so records arrive below the expected offset); some brokers (tansu)
    # return nothing, with a high watermark below the position. Either way the state no
    # longer matches the data: the partition starts cold.
    def verify_assigned(self) -> None:
        """Restore from a remote store, look up what was already emitted, check restored
        offsets against the log start and the topic id, then resume."""
        self.restore_assigned()
        self.find_emitted()
        pending = sorted(tp for tp in self.unverified if tp in self.states)
        if not pending:
            return
        starts = self.retry("metadata", lambda: self.consumer.beginning_offsets(pending))
        for tp in pending:
            state = self.states.get(tp)
            if state is None or tp not in self.unverified:  # revoked meanwhile
                continue
            current_id = kafka_io.topic_id(self.consumer, tp.topic)
            start = starts.get(tp)
            offset = state.next_offset
            if offset is not None and state.topic_id and current_id not in (None, state.topic_id):
                self.reset(tp, "topic_recreated", log_start=start, log_end=None, seek=True)
            elif offset is not None and start is not None and offset < start:
                self.reset(tp, "before_start", log_start=start, log_end=None, seek=True)
            else:
                state.topic_id = current_id
            self.unverified.discard(tp)
            self.consumer.resume(tp)

    def check_positions(self) -> set[TopicPartition]:
        """After a poll: partitions whose topic was recreated or whose log now ends below
        their offset are reset; returns them (records of this poll for them are stale)."""
        reset = set()
        for tp, state in list(self.states.items()):
            if tp in self.unverified:
                continue
            current_id = kafka_io.topic_id(self.consumer, tp.topic)
            if current_id is not None and current_id != state.topic_id:
                if state.topic_id is not None and state.next_offset is not None:
                    self.reset(tp, "topic_recreated", log_start=None, log_end=None, seek=True)
                    reset.add(tp)
                    continue
                state.topic_id = current_id
            if state.next_offset is None:
                continue
            high = self.highwater(tp)
            if high is not None and high < state.next_offset:
                self.reset(tp, "beyond_end", log_start=None, log_end=high, seek=True)
                reset.add(tp)
        return reset

    def highwater(self, tp: TopicPartition) -> int | None:
        try:
            return self.consumer.highwater(tp)  # type: ignore[no-any-return]
        except IllegalStateError:  # no longer assigned; the listener drops it
            return None

    def reset(
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
        old = self.states[tp]
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
            active_drifts_dropped=len(old.drifts),
        )
        self.metrics.offset_resets.labels(reason).inc()
        self.drop(tp)
        state = self.owner.new_state()
        state.topic_id = kafka_io.topic_id(self.consumer, tp.topic)
        self.states[tp] = state
        if seek:
            if policy == "earliest":
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek_to_end(tp)
        return state

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
        states = self.states
        targets = [
            tp
            for tp in (tps if tps is not None else list(states))
            if tp in states
            and states[tp].next_offset is not None
            and (states[tp].events_since_checkpoint > 0 or states[tp].drifts.changed)
        ]
        if not targets:
            return
        # Dead letters and detections of the checkpointed records must be durable first.
        if blocking_commit:
            self.retry("produce", self.owner.flush_outputs)
        else:
            # In a rebalance callback (kafka-python's IO thread): no waiting out an outage.
            # Unsaved, the records are re-read from the last checkpoint: nothing is lost.
            try:
                self.owner.flush_outputs()
            except KafkaError as exc:
                log.warning("checkpoint skipped: producer flush failed", error=str(exc)[:300])
                return
        now = self.clock()
        offsets = {}
        for tp in targets:
            state = states[tp]
            assert state.next_offset is not None
            snapshot = state.pipeline.monitor.snapshot()
            drifts = tuple(state.drifts.active.values())
            ckpt = Checkpoint(
                tp.topic, tp.partition, state.next_offset, snapshot, now, drifts, state.topic_id
            )
            if blocking_commit:
                self.retry("state write", lambda ckpt=ckpt: self.store.save(ckpt))  # type: ignore[misc]
            else:
                try:
                    self.store.save(ckpt)
                except KafkaError as exc:
                    # Unsaved and uncommitted: the next owner re-reads from the last checkpoint.
                    log.warning("checkpoint skipped: state write failed", error=str(exc)[:300])
                    break
            state.events_since_checkpoint = 0
            state.emitted_ids = {i: o for i, o in state.emitted_ids.items() if o >= ckpt.offset}
            state.drifts.saved()
            offsets[tp] = OffsetAndMetadata(state.next_offset, "", -1)
        if not offsets:
            return
        self._commit(offsets, blocking_commit)
        self.metrics.checkpoints.inc()
        self.last_checkpoint = time.monotonic()
        log.info(
            "checkpoint",
            partitions={f"{tp.topic}-{tp.partition}": o.offset for tp, o in offsets.items()},
        )

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], blocking: bool) -> None:
        try:
            if blocking:
                self.retry(
                    "commit",
                    lambda: self.consumer.commit(offsets, timeout_ms=COMMIT_ATTEMPT_TIMEOUT_MS),
                )
            else:
                self.consumer.commit_async(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            # The state file already holds the offset; the next owner resumes from it
            # (here) or from the last committed offset with fresh state (elsewhere).
            log.warning("offset commit failed", error=type(exc).__name__)

    def checkpoint_due(self) -> bool:
        s = self.settings.state
        return any(
            p.events_since_checkpoint >= s.checkpoint_every_events for p in self.states.values()
        ) or (time.monotonic() - self.last_checkpoint >= s.checkpoint_every_seconds)
