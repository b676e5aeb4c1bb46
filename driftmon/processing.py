"""What the daemon does with records: each assigned partition's pipeline, dead letters,
detections through the drift lifecycle (:mod:`driftmon.core.drifts`) to the sinks, and
the periodic refresh that publishes metrics and resolves quiet drifts.

Main thread only (and the rebalance callbacks, which kafka-python runs inside ``poll``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
from kafka import TopicPartition

from driftmon import kafka as kafka_io
from driftmon.config import feature_config, pipeline_config
from driftmon.core.drifts import ActiveDrift, ResolvePolicy
from driftmon.core.events import Rejection
from driftmon.core.features import FeatureExtractor
from driftmon.core.monitor import Detection
from driftmon.core.pipeline import Pipeline
from driftmon.embedding import EmbeddingPath
from driftmon.kafka import PRODUCER_FLUSH_TIMEOUT
from driftmon.metrics import Metrics
from driftmon.partitions import Partitions, PartitionState
from driftmon.refresh import MetricsRefresh
from driftmon.settings import Settings
from driftmon.sinks import Origin, Sinks

log = structlog.get_logger(__name__)
# Kafka record times past this (10000-01-01) are not times: the record counts as untimed.
MAX_EPOCH_SECONDS = 253_402_300_800.0
# A whole message rejected for one of these could not be decoded at all (input.undecodable).
UNDECODABLE_REASONS = frozenset({"not_json", "not_object", "not_protobuf", "too_large"})


class Processor:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        partitions: Partitions,
        sinks: Sinks,
        embedding: EmbeddingPath | None,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.kafka = partitions
        self.partitions = partitions.states  # the same dict, never replaced
        partitions.owner = self
        self.sinks = sinks
        self.embedding = embedding
        self.clock = clock
        self.series = MetricsRefresh(settings, metrics)
        self.extractor = FeatureExtractor(feature_config(settings))
        a = settings.alertmanager
        self.resolve_policy = ResolvePolicy(
            settings.detectors.warmup_events, a.resolve_after_quiet_events, a.min_active_seconds
        )
        self.producer: Any = None  # the daemon's, once connected

    # -- what the partitions call back (driftmon.partitions.Owner) -----------------------
    def new_state(self) -> PartitionState:
        sampler = self.embedding.sampler if self.embedding else None
        return PartitionState(
            Pipeline(
                pipeline_config(self.settings),
                extractor=self.extractor,
                sampler=sampler,
                sampler_clock=time.monotonic,
            )
        )

    def activate(self, drift: ActiveDrift, state: PartitionState) -> None:
        """Mark a drift active and fire it: on detection, and for a drift active in a
        restored checkpoint (same startsAt, so Alertmanager sees the alert continue; it
        resolves once its feature is quiet, as if the daemon had never stopped)."""
        state.drifts.fire(drift)
        self.series.drift_active(drift)
        self.sinks.fire(drift)

    def dropped(self, state: PartitionState) -> None:
        for key in state.pipeline.monitor.key_states():
            self.remove_key_series(key.endpoint, key.model)
        # Not ours to re-send or resolve any more: they expire unless the new owner fires
        # (or another partition of ours still has the same drift active).
        for drift in state.drifts.active.values():
            if not self._drift_elsewhere(drift.key):
                # The flag goes too: a page on driftmon_drift_active must not outlive it.
                self.series.drift_resolved(drift)
                self.sinks.forget(drift)

    def flush_outputs(self) -> None:
        self.sinks.flush()
        self.producer.flush(timeout=PRODUCER_FLUSH_TIMEOUT)  # dead letters too

    # A key whose records are spread over several partitions (unkeyed producers) has a
    # monitor in each: its series and its drifts are shared, so they go only when no
    # partition of this process still has the key (or the drift).
    def _key_elsewhere(self, endpoint: str, model: str) -> bool:
        return any(s.pipeline.monitor.get(endpoint, model) for s in self.partitions.values())

    def _drift_elsewhere(self, key: tuple[str, str, str]) -> bool:
        return any(key in s.drifts for s in self.partitions.values())

    def remove_key_series(self, endpoint: str, model: str) -> None:
        if not self._key_elsewhere(endpoint, model):
            self.series.remove_key(endpoint, model)

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
                state = self.kafka.reset(tp, "beyond_end", log_start=None, log_end=None, seek=False)
            process = state.pipeline.process_message
            for rec in records:
                # The record's time, when it is a plausible one (a producer writing
                # microseconds as CreateTime must not put detections in the year 55 840).
                ts = rec.timestamp / 1000.0 if rec.timestamp else None
                if ts is not None and not 0.0 < ts < MAX_EPOCH_SECONDS:
                    ts = None
                outcomes = process(rec.value if rec.value is not None else b"", rec.offset, ts)
                # The state now holds the whole message: move its offset with it, so that a
                # checkpoint taken after an error later in the batch stays exact.
                state.next_offset = rec.offset + 1
                state.events_since_checkpoint += 1
                n += 1
                rejections: list[Rejection] = []
                for out in outcomes:
                    if out.rejection is not None:
                        self.metrics.events_rejected.labels(out.rejection.reason).inc()
                        rejections.append(out.rejection)
                    elif out.event is not None:
                        key_counts[(out.event.endpoint, out.event.model)] += 1
                        if out.embed and self.embedding is not None:
                            self.embedding.submit(tp, out.event, rec.offset, ts)
                    for det in out.detections:
                        self.detected(tp, rec.offset, det, state)
                if rejections and not (
                    len(outcomes) == 1 and self._undecodable(tp, rec.offset, rejections[0])
                ):
                    self._dead_letter(tp, rec, rejections, len(outcomes))
        if key_counts:
            self.series.count_events(key_counts)
        return n

    def _undecodable(self, tp: TopicPartition, offset: int, rejection: Rejection) -> bool:
        """Count and log a message that could not be decoded at all; True when it is to be
        skipped (``input.undecodable: skip``) rather than dead-lettered."""
        if rejection.field is not None or rejection.reason not in UNDECODABLE_REASONS:
            return False
        action = self.settings.input.undecodable
        self.metrics.messages_undecodable.labels(tp.topic, action).inc()
        log.warning(
            "message could not be decoded",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            reason=rejection.reason,
            action=action,
        )
        return action == "skip"

    def _dead_letter(
        self, tp: TopicPartition, rec: Any, rejections: list[Rejection], items: int
    ) -> None:
        """Dead-letter a message once, however many of its items were rejected: the
        headers carry the first rejection, and for a batch how many items of how many
        were rejected, by reason (the good items of the batch were processed)."""
        dead_letters = self.settings.kafka.dead_letter_topic
        rejection = rejections[0]
        if items > 1:
            reasons = Counter(r.reason for r in rejections)
            counts = ", ".join(f"{reason}={k}" for reason, k in sorted(reasons.items()))
            rejection = Rejection(
                rejection.reason,
                f"{len(rejections)} of {items} items rejected ({counts}); first: "
                f"{rejection.detail}",
                rejection.field,
            )
        kafka_io.send_dead_letter(
            self.producer,
            dead_letters,
            value=rec.value,
            key=rec.key,
            rejection=rejection,
            source_topic=tp.topic,
            partition=tp.partition,
            offset=rec.offset,
            max_value_bytes=self.settings.kafka.max_message_bytes,
            on_error=kafka_io.produce_failed(
                self.metrics, dead_letters, tp.topic, tp.partition, rec.offset
            ),
        )

    def detected(
        self, tp: TopicPartition, offset: int, det: Detection, state: PartitionState
    ) -> None:
        now = self.clock()
        detected_at = det.timestamp if det.timestamp is not None else now
        self.activate(ActiveDrift.from_detection(det, detected_at=detected_at, since=now), state)
        if det.detection_id in state.emitted_ids:
            # Emitted before the hand-off or restart, for a record now read again: the drift
            # is active again (same startsAt), the detection itself is not repeated.
            return
        self.metrics.drift_detections.labels(
            det.endpoint, det.model, det.feature, det.detector
        ).inc()
        self.sinks.add(det, Origin(tp.topic, tp.partition, offset))

    def apply_embeddings(self) -> None:
        """Feed finished embeddings to their partition's monitor (main thread only)."""
        assert self.embedding is not None
        for tp, endpoint, model, offset, ts, vector in self.embedding.drain():
            state = self.partitions.get(tp)
            if state is None:  # revoked meanwhile: the new owner samples its own
                continue
            errors = sum(state.pipeline.embedding_errors.values())
            for det in state.pipeline.process_embedding(endpoint, model, vector, offset, ts):
                self.detected(tp, offset, det, state)
            if sum(state.pipeline.embedding_errors.values()) > errors:
                self.metrics.embeddings_skipped.labels("internal_error").inc()
                log.warning(
                    "embedding could not be applied, skipped",
                    errors=dict(state.pipeline.embedding_errors),
                )

    def refresh_metrics(self) -> None:
        """Gauges and resolutions, at most every few seconds: never per event."""
        now = self.clock()

        def evicted(keys: list[tuple[str, str]]) -> None:
            for ep, model in keys:
                self.remove_key_series(ep, model)
                if self.embedding is not None:
                    self.embedding.sampler.forget((ep, model))

        def resolve(state: PartitionState) -> None:
            # A backfill can be quiet again within a second: min_active_seconds keeps the
            # drift visible long enough for Prometheus to scrape it.
            for drift in state.drifts.resolve_quiet(
                state.pipeline.monitor, now, self.resolve_policy
            ):
                if not self._drift_elsewhere(drift.key):
                    self.series.drift_resolved(drift)
                    self.sinks.resolve(drift)

        self.series.refresh(
            self.partitions.items(),
            evicted=evicted,
            resolve=resolve,
            highwater=self.kafka.highwater,
        )
