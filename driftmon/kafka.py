"""Kafka at the edge: client settings, the consumer and producer, dead letters, detections.

Producers of LLM-output events should key each message by ``endpoint|model``: Kafka then
keeps one key's events in one partition, in order, and driftmon (which keeps detector
state per assigned partition) sees each key's whole stream in one place. Unkeyed events
still work, but a key spread over several partitions is watched separately in each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import KafkaError
from kafka.record.memory_records import MemoryRecords

from driftmon.core.events import Rejection
from driftmon.core.monitor import Detection
from driftmon.settings import KafkaSettings

if TYPE_CHECKING:
    from driftmon.metrics import Metrics

log = structlog.get_logger(__name__)

# How long a retriable Kafka error (broker down, coordinator moving, request timed out) is
# retried, with exponential back-off, before the daemon gives up: bootstrap, offset commits,
# producer flushes, offset look-ups.
KAFKA_RETRY_DEADLINE_SECONDS: Final = 300.0
RETRY_BACKOFF_SECONDS: Final = (0.5, 10.0)  # first and longest pause between attempts
PRODUCER_FLUSH_TIMEOUT: Final = 30.0

T = TypeVar("T")

DLQ_HEADERS = (
    "driftmon-reason",
    "driftmon-detail",
    "driftmon-source-topic",
    "driftmon-source-partition",
    "driftmon-source-offset",
)


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security settings shared by consumer and producer."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = settings.sasl_mechanism
        cfg["sasl_plain_username"] = settings.sasl_username
        cfg["sasl_plain_password"] = settings.password()
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_check_hostname"] = settings.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, key)
            if value is not None:
                cfg[key] = str(value)
    return cfg


def make_consumer(settings: KafkaSettings, *, bootstrap_timeout_ms: int = 30_000) -> KafkaConsumer:
    """A group consumer with manual commits; subscribe it with a rebalance listener.

    Blocks until a broker answers or ``bootstrap_timeout_ms`` passes (``KafkaTimeoutError``).
    """
    return KafkaConsumer(
        **client_config(settings),
        bootstrap_timeout_ms=bootstrap_timeout_ms,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=settings.max_poll_records,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_bytes=max(52_428_800, settings.max_message_bytes * 4),
        max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes * 2),
    )


def subscribe(
    consumer: KafkaConsumer, topics: list[str], listener: ConsumerRebalanceListener
) -> None:
    consumer.subscribe(topics=topics, listener=listener)


class UndecodableBatch(Exception):
    """A fetched record batch that could not be decompressed or parsed: where it is, and
    the first offset after it (None when even its header cannot be read)."""

    def __init__(
        self, tp: TopicPartition, offset: int, next_offset: int | None, cause: BaseException
    ) -> None:
        super().__init__(f"{tp.topic}[{tp.partition}] at offset {offset}: {cause!r}")
        self.tp = tp
        self.offset = offset
        self.next_offset = next_offset
        self.cause = cause


def _batch_end(records: MemoryRecords, offset: int) -> int | None:
    """The offset after the batch holding ``offset``, read from the batch headers alone
    (they are never compressed); None when the headers cannot be read either."""
    try:
        scan = MemoryRecords(records._buffer)
        while (batch := scan.next_batch()) is not None:
            # A legacy (v0/v1) compressed wrapper carries the offset of its last record.
            end = batch.next_offset if batch.magic == 2 else batch.base_offset + 1
            if end > offset:
                return int(end)
    except Exception:  # a header too damaged to read: the caller steps forward instead
        return None
    return None


class _TrackedPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's fetched records of one partition, whose decoding errors (codec
    missing, lz4/zstd/snappy/gzip failure, CRC mismatch, a malformed batch) say where
    they are. kafka-python raises them from ``poll`` with no partition or offset, and
    then loops forever on the dead iterator unless the position moves (3.0.12)."""

    def _unpack_records(
        self, tp: TopicPartition, records: MemoryRecords, key_des: Any, value_des: Any
    ) -> Iterator[Any]:
        try:
            yield from super()._unpack_records(tp, records, key_des, value_des)
        except Exception as exc:
            offset = self.next_fetch_offset
            raise UndecodableBatch(tp, offset, _batch_end(records, offset), exc) from exc


def _track_batches(consumer: KafkaConsumer) -> None:
    # The fetcher builds each partition's records with ``self.PartitionRecords(...)``:
    # an instance attribute is the narrowest seam (kafka-python 3.x; pinned < 4).
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and fetcher.PartitionRecords is not _TrackedPartitionRecords:
        fetcher.PartitionRecords = _TrackedPartitionRecords


# kafka-python 3.0.12 caps each wait inside ``poll`` by the coordinator's next heartbeat,
# and that deadline stays at 0 while a heartbeat is unanswered. A broker that stops
# answering but keeps its connections (frozen, overloaded, a half-dead network path) so
# turns ``poll`` into a spin that adds a callback to the in-flight fetch on every turn
# until the request times out (30 s): measured with a frozen broker, 100 % of a core,
# ~62 000 callbacks and +160 MB in 17 s, and ``/healthz`` answering in over a second
# as the collector walked them (CI once saw it miss a 2 s deadline). A floor on that
# deadline turns the spin into waits of POLL_WAIT_FLOOR; a heartbeat that is due goes
# out at most that much later (heartbeats are seconds apart).
POLL_WAIT_FLOOR: Final = 0.05


def _floor_poll_wait(consumer: KafkaConsumer) -> None:
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "_driftmon_wait_floor", False):
        return
    deadline = coordinator.time_to_next_poll  # read only by KafkaConsumer._poll_once

    def time_to_next_poll() -> float:
        return max(float(deadline()), POLL_WAIT_FLOOR)

    coordinator.time_to_next_poll = time_to_next_poll
    coordinator._driftmon_wait_floor = True


def poll_records(
    consumer: KafkaConsumer,
    timeout_ms: int,
    max_records: int,
    on_undecodable: Callable[[str, int, int, int], None],
) -> dict[TopicPartition, list[Any]]:
    """``consumer.poll``, except that a batch that cannot be decompressed or parsed is
    skipped, never raised: one warning (topic, partition, offset, error; never content),
    ``on_undecodable(topic, partition, offset, next_offset)``, and the position moves to
    the offset after the batch, read from its uncompressed header (or, when that cannot
    be read either, one offset forward per call). Returns what could be read (nothing in
    the call that met the bad batch; the next call goes on past it).
    """
    _track_batches(consumer)
    _floor_poll_wait(consumer)
    try:
        records: dict[TopicPartition, list[Any]] = consumer.poll(
            timeout_ms=timeout_ms, max_records=max_records
        )
    except UndecodableBatch as bad:
        resume = max(bad.offset + 1, bad.next_offset or 0)
        log.warning(
            "record batch could not be decoded, skipped",
            topic=bad.tp.topic,
            partition=bad.tp.partition,
            offset=bad.offset,
            next_offset=resume,
            header_read=bad.next_offset is not None,
            error=repr(bad.cause)[:300],
        )
        on_undecodable(bad.tp.topic, bad.tp.partition, bad.offset, resume)
        if bad.tp in consumer.assignment():
            consumer.seek(bad.tp, resume)
        return {}
    return records


def skip_undecodable(
    metrics: Metrics, states: Mapping[TopicPartition, Any]
) -> Callable[[str, int, int, int], None]:
    """The daemon's ``on_undecodable`` for :func:`poll_records`: counts the batch in
    ``driftmon_messages_undecodable_total{topic, action="skip"}`` and moves the partition's
    state (``states``: the daemon's ``PartitionState`` by partition) past it, so that the
    next checkpoint commits past it even when no record follows. A batch that cannot be
    read has no value to dead-letter: skipping past it is the only action."""

    def skip(topic: str, partition: int, offset: int, next_offset: int) -> None:
        metrics.messages_undecodable.labels(topic, "skip").inc()
        state = states.get(TopicPartition(topic, partition))
        if state is not None and (state.next_offset is None or state.next_offset < next_offset):
            state.next_offset = next_offset
            # Due in the next checkpoint even when no record follows the skipped batch.
            state.events_since_checkpoint += 1

    return skip


def retriable(exc: BaseException) -> bool:
    """Whether kafka-python marks the error as transient (a lost connection, a request timed
    out, a coordinator moving): worth retrying after a back-off."""
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def topic_id(consumer: KafkaConsumer, topic: str) -> str | None:
    """The topic's id in the consumer's latest metadata (brokers ≥ 2.8), else None.

    A new id for a known name means the topic was deleted and created again (or the
    cluster's data was reset): its offsets start over.
    """
    cluster = getattr(consumer, "_cluster", None)
    found = cluster.topic_id(topic) if cluster is not None else None
    if found is None or str(found) == "00000000-0000-0000-0000-000000000000":
        return None
    return str(found)


def make_producer(settings: KafkaSettings, *, bootstrap_timeout_ms: int = 30_000) -> KafkaProducer:
    """Producer for dead letters and detections: durable (acks=all), batched."""
    return KafkaProducer(
        **client_config(settings),
        bootstrap_timeout_ms=bootstrap_timeout_ms,
        acks="all",
        linger_ms=20,
        retries=2_147_483_647,
        max_request_size=max(1_048_576, settings.max_message_bytes + 65_536),
    )


def send_dead_letter(
    producer: KafkaProducer,
    topic: str,
    *,
    value: bytes | None,
    key: bytes | None,
    rejection: Rejection,
    source_topic: str,
    partition: int,
    offset: int,
    max_value_bytes: int,
    on_error: Callable[[BaseException], None],
) -> None:
    """Produce the rejected record unchanged, with why and where it came from in headers.

    ``driftmon-field`` names the field the rejection is about, when there is one. Two
    records cannot go unchanged: one with neither key nor value (Kafka refuses to
    produce it) goes with an empty value and ``driftmon-null-value: true``; one longer
    than ``max_value_bytes`` (rejected as ``too_large``; the producer would refuse it)
    goes with its first ``max_value_bytes`` bytes and ``driftmon-truncated-from: <bytes>``.
    A send that fails, at once or later, is reported to ``on_error``, never raised: a
    dead letter must not stop consumption.
    """
    headers = list(
        zip(
            DLQ_HEADERS,
            (
                rejection.reason.encode(),
                rejection.detail.encode("utf-8", "replace"),
                source_topic.encode(),
                str(partition).encode(),
                str(offset).encode(),
            ),
            strict=True,
        )
    )
    if rejection.field is not None:  # the field or attribute the rejection is about
        headers.append(("driftmon-field", rejection.field.encode("utf-8", "replace")))
    if value is None and key is None:
        value = b""
        headers.append(("driftmon-null-value", b"true"))
    elif value is not None and len(value) > max_value_bytes:
        headers.append(("driftmon-truncated-from", str(len(value)).encode()))
        value = value[:max_value_bytes]
    _send(producer, topic, value=value, key=key, headers=headers, on_error=on_error)


def _send(
    producer: KafkaProducer,
    topic: str,
    *,
    value: bytes | None,
    key: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    on_error: Callable[[BaseException], None],
) -> None:
    try:
        future = producer.send(topic, value=value, key=key, headers=headers)
    except (KafkaError, ValueError, TypeError, AssertionError) as exc:
        on_error(exc)
    else:
        future.add_errback(on_error)


def send_detection(
    producer: KafkaProducer,
    topic: str,
    *,
    key: bytes,
    value: bytes,
    on_error: Callable[[BaseException], None],
    detection_id: str | None = None,
) -> None:
    """Produce one detection record (its ``detection_id`` also in the
    ``driftmon-detection-id`` header); failures go to ``on_error``, never raised."""
    headers = [(DETECTION_ID_HEADER, detection_id.encode())] if detection_id else None
    _send(producer, topic, value=value, key=key, headers=headers, on_error=on_error)


DETECTION_ID_HEADER: Final = "driftmon-detection-id"
# Producer and consumer clocks may differ: the look-back starts this much earlier.
EMITTED_LOOKBACK_SECONDS: Final = 120.0


def emitted_detections(
    config: dict[str, Any],
    detections_topic: str,
    restored: Mapping[TopicPartition, tuple[int, float]],
    *,
    timeout: float = 60.0,
) -> dict[TopicPartition, dict[str, int]]:
    """The detections already on ``detections_topic`` for records at or after each restored
    checkpoint (``restored``: source partition → (checkpoint offset, written_at)): detection
    id → source offset. Reads every partition of the detections topic from the earliest
    checkpoint's time (minus a margin for clock skew) to its end, without a group."""
    found: dict[TopicPartition, dict[str, int]] = {tp: {} for tp in restored}
    if not restored:
        return found
    since_ms = int((min(w for _, w in restored.values()) - EMITTED_LOOKBACK_SECONDS) * 1000)
    consumer = KafkaConsumer(**config, group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(detections_topic) or set()
        tps = [TopicPartition(detections_topic, p) for p in sorted(parts)]
        if not tps:
            return found
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.offsets_for_times({tp: max(since_ms, 0) for tp in tps})
        for tp in tps:
            start = starts.get(tp)
            if start is None:  # nothing written since: nothing to read
                consumer.seek(tp, ends[tp])
            else:
                consumer.seek(tp, start.offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for records in batch.values():
                for rec in records:
                    _note_emitted(rec.value, restored, found)
            if not batch and all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
    finally:
        consumer.close()
    return found


def _note_emitted(
    value: bytes | None,
    restored: Mapping[TopicPartition, tuple[int, float]],
    found: dict[TopicPartition, dict[str, int]],
) -> None:
    try:
        body = json.loads(value or b"")
        source = TopicPartition(body["topic"], body["partition"])
        offset, detection_id = body["offset"], body["detection_id"]
    except (ValueError, KeyError, TypeError):  # not a driftmon detection record
        return
    since = restored.get(source)
    if since is not None and isinstance(offset, int) and offset >= since[0]:
        found[source][str(detection_id)] = offset


def detection_record(detection: Detection, *, topic: str, partition: int, offset: int) -> bytes:
    """The replay report's detection object plus where it happened, as JSON."""
    body = detection.report()
    body.update(
        {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "detected_at": detection.timestamp,
            "statistic": detection.statistic,
            "threshold": detection.threshold,
            "key_events": detection.key_events,
            "events_since_onset": detection.events_since_onset,
        }
    )
    return json.dumps(body, sort_keys=True).encode()


def produce_failed(
    metrics: Metrics, topic: str, source_topic: str, source_partition: int, source_offset: int
) -> Callable[[BaseException], None]:
    """An ``on_error`` that counts and logs a dead letter or detection the producer could not
    deliver (may run on the producer's thread; never logs the record itself)."""

    def failed(exc: BaseException) -> None:
        metrics.produce_failed.labels(topic).inc()
        log.warning(
            "produce failed",
            topic=topic,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            error=repr(exc)[:300],
        )

    return failed


def retry(
    operation: str,
    call: Callable[[], T],
    *,
    metrics: Metrics,
    stopping: Callable[[], bool],
) -> T:
    """``call()``, retried on retriable Kafka errors with back-off until
    ``KAFKA_RETRY_DEADLINE_SECONDS``; then (or once ``stopping()``) the error is raised."""
    deadline = time.monotonic() + KAFKA_RETRY_DEADLINE_SECONDS
    pause, longest = RETRY_BACKOFF_SECONDS
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not retriable(exc) or stopping() or time.monotonic() + pause > deadline:
                raise
            metrics.kafka_retries.labels(operation).inc()
            log.warning(
                "kafka operation failed, retrying",
                operation=operation,
                error=str(exc)[:300],
                retry_in=pause,
                gives_up_in=round(deadline - time.monotonic()),
            )
        end = time.monotonic() + pause
        while not stopping() and time.monotonic() < end:
            time.sleep(min(0.2, end - time.monotonic()))
        pause = min(pause * 2, longest)
