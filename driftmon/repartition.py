"""The repartition stage: input messages re-keyed by endpoint into ``kafka.repartition_topic``.

driftmon keeps its state per partition, and model transitions compare an endpoint's
versions, so every event of an endpoint must be in one partition. Producers that do not
key by endpoint (the OpenTelemetry Collector's Kafka exporter keys by trace or not at all)
spread an endpoint over every partition. This stage consumes the input topics in its own
group (``<group_id>-repartition``), decodes each message just enough to find its endpoint,
and produces the message unchanged to the repartition topic keyed by that endpoint; the
monitoring consumer reads the repartition topic instead of the inputs.

Keying rule: a message goes whole, keyed by the endpoint of its first event. A batch
(an OTLP export, say) holding several endpoints stays together under the first one and is
counted (``driftmon_repartition_records_total{keyed_by="mixed"}``): splitting it would mean
re-encoding events into another format. A message with no event (undecodable, empty, or
nothing but spans that are not model answers) goes with the fixed key ``""``, so that the
monitoring side rejects, counts and dead-letters it as it would have from the input; it is
never dropped here. A message longer than ``kafka.max_message_bytes`` goes truncated to one
byte over that limit (header ``driftmon-truncated-from``): the monitoring side rejects it as
``too_large`` as it would the original.

Delivery: at least once. The input offsets of a poll are committed only after every record
produced from it is acknowledged (``acks=all``); a failed send re-sends the poll from its
first offset. One poll is in flight at a time, so memory is bounded by
``kafka.max_poll_records``. Runs on its own thread inside the daemon (:meth:`start`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import prometheus_client
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from driftmon import kafka as kafka_io
from driftmon.core.events import Event
from driftmon.decoders import Decoder, DecoderOptions, decoder
from driftmon.metrics import Metrics
from driftmon.settings import InputSettings, KafkaSettings

log = structlog.get_logger(__name__)

GROUP_SUFFIX: Final = "-repartition"
FIXED_KEY: Final = b""
ORIGIN_HEADERS: Final = (
    "driftmon-origin-topic",
    "driftmon-origin-partition",
    "driftmon-origin-offset",
)
TOPIC_WAIT_SECONDS: Final = 2.0  # between looks for input topics that do not exist yet

KeyedBy = Literal["endpoint", "mixed", "none"]


@dataclass(frozen=True, slots=True)
class Keyed:
    """The key a message goes to the repartition topic with, and why."""

    key: bytes
    keyed_by: KeyedBy


class Keyer:
    """A message's bytes → its key: the endpoint of its first event, else ``b""``.

    Uses the daemon's decoder for ``input.format`` with no duplicate memory: a message seen
    twice must get the same key twice.

    >>> keyer = Keyer("native", ["driftmon.endpoint"], max_bytes=1000)
    >>> keyer(b'{"endpoint": "chat", "model": "m", "output": "hi"}')
    Keyed(key=b'chat', keyed_by='endpoint')
    >>> keyer(b"not json")
    Keyed(key=b'', keyed_by='none')
    """

    def __init__(self, fmt: str, endpoint_from: Iterable[str], *, max_bytes: int) -> None:
        self._decode: Decoder = decoder(fmt, DecoderOptions(tuple(endpoint_from), dedup_window=0))
        self.max_bytes = max_bytes

    def __call__(self, value: bytes | None) -> Keyed:
        if not value:
            return Keyed(FIXED_KEY, "none")
        first: str | None = None
        try:
            for item in self._decode(value, max_bytes=self.max_bytes):
                if not isinstance(item, Event):
                    continue
                if first is None:
                    first = item.endpoint
                elif item.endpoint != first:
                    return Keyed(first.encode(), "mixed")
        except Exception:  # a decoder bug: forwarded for the monitoring side to reject
            return Keyed(FIXED_KEY, "none")
        if first is None:
            return Keyed(FIXED_KEY, "none")
        return Keyed(first.encode(), "endpoint")


class RepartitionMetrics:
    """``driftmon_repartition_records_total{keyed_by}`` and
    ``driftmon_repartition_resends_total`` (polls produced again after a failed send)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = prometheus_client.Counter(
            "driftmon_repartition_records",
            "Input messages produced to the repartition topic, by how their key was found.",
            ("keyed_by",),
            registry=registry,
        )
        self.resends = prometheus_client.Counter(
            "driftmon_repartition_resends",
            "Polls produced again to the repartition topic after a failed send.",
            registry=registry,
        )


def partition_count(consumer: KafkaConsumer, topics: list[str]) -> int | None:
    """The largest partition count among ``topics``; None when none of them exists yet."""
    counts = [len(consumer.partitions_for_topic(t) or ()) for t in topics]
    return max(counts) if any(counts) else None


def ensure_topic(
    settings: KafkaSettings, consumer: KafkaConsumer, target: str, stopping: Callable[[], bool]
) -> int | None:
    """Create ``target`` with the inputs' partition count when it is missing; its partition
    count (None when an exit was requested while waiting for an input topic to exist)."""
    existing = consumer.partitions_for_topic(target)
    if existing:
        return len(existing)
    waited = False
    while (count := partition_count(consumer, settings.topics)) is None:
        if stopping():
            return None
        if not waited:
            log.warning("waiting for the input topics to exist", topics=settings.topics)
            waited = True
        time.sleep(TOPIC_WAIT_SECONDS)  # partitions_for_topic fetches metadata again
    admin = KafkaAdminClient(**kafka_io.client_config(settings))
    try:
        admin.create_topics([NewTopic(target, num_partitions=count, replication_factor=-1)])
        log.info("repartition topic created", topic=target, partitions=count)
    except TopicAlreadyExistsError:  # another replica's stage created it first
        pass
    finally:
        admin.close()
    return count


class RepartitionStage:
    """Consumes ``kafka.topics`` in group ``<group_id>-repartition`` and produces each
    message, re-keyed by endpoint, to ``target``. :meth:`run` blocks until :meth:`stop`;
    :meth:`start` runs it on a thread and keeps a fatal error in :attr:`error`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        inputs: InputSettings,
        target: str,
        metrics: Metrics,
        registry: CollectorRegistry,
        *,
        group_id: str | None = None,
    ) -> None:
        self.kafka = kafka
        self.target = target
        self.group_id = group_id or kafka.group_id + GROUP_SUFFIX
        self.metrics = metrics
        self.counts = RepartitionMetrics(registry)
        self.keyer = Keyer(inputs.format, inputs.endpoint_from, max_bytes=kafka.max_message_bytes)
        self.should_exit = False
        self.error: BaseException | None = None
        self.topic_ready = threading.Event()
        self.thread: threading.Thread | None = None
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        # Offsets past batches kafka-python could not decode, committed with the next poll.
        self._skipped: dict[TopicPartition, int] = {}
        self._pause = kafka_io.RETRY_BACKOFF_SECONDS[0]  # before the next re-send

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self._run_kept, name="driftmon-repartition")
        self.thread.daemon = True
        self.thread.start()
        return self.thread

    @property
    def running(self) -> bool:
        """The stage's thread is alive (``/readyz`` needs it)."""
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the loop to end after its current poll (produced, acknowledged, committed),
        and wait for the thread."""
        self.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def _run_kept(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # the daemon's loop raises it on its own thread
            log.error("repartition stage stopped", error=repr(exc)[:500])
            self.error = exc

    def run(self) -> None:
        k = self.kafka
        try:
            self.consumer = kafka_io.make_consumer(k.model_copy(update={"group_id": self.group_id}))
            self.producer = KafkaProducer(
                **kafka_io.client_config(k),
                acks="all",
                linger_ms=5,
                retries=2_147_483_647,
                # One request in flight per broker: a retried request cannot overtake the
                # next, so an endpoint's events keep their order in the repartition topic.
                max_in_flight_requests_per_connection=1,
                max_request_size=max(1_048_576, k.max_message_bytes + 65_536),
            )
            if ensure_topic(k, self.consumer, self.target, lambda: self.should_exit) is None:
                return
            self.topic_ready.set()
            self.consumer.subscribe(topics=k.topics)
            log.info("repartition stage started", topics=k.topics, target=self.target)
            while not self.should_exit:
                self.step()
        finally:
            self._close()

    def _close(self) -> None:
        # Every poll was committed or is to be re-sent: nothing is lost by not committing.
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close(timeout=10)
        log.info("repartition stage closed", group=self.group_id)

    # -- one poll ---------------------------------------------------------------------
    def step(self) -> int:
        """Poll, produce, wait for every acknowledgement, then commit; the number of
        records forwarded (0 after a failed send: the poll is re-sent)."""
        assert self.consumer is not None and self.producer is not None
        k = self.kafka
        batch = kafka_io.poll_records(
            self.consumer, k.poll_timeout_ms, k.max_poll_records, self._undecodable
        )
        if not batch:
            self._commit({})
            return 0
        keyed_by: Counter[str] = Counter()
        futures = [self._send(rec, keyed_by) for records in batch.values() for rec in records]
        for how, n in keyed_by.items():
            self.counts.records.labels(how).inc(n)
        kafka_io.retry(
            "repartition flush",
            lambda: self.producer.flush(timeout=kafka_io.PRODUCER_FLUSH_TIMEOUT),  # type: ignore[union-attr]
            metrics=self.metrics,
            stopping=lambda: self.should_exit,
        )
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            self._resend(batch, failed)
            return 0
        # Committed only now: every record of the poll is acknowledged (acks=all).
        self._commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        self._pause = kafka_io.RETRY_BACKOFF_SECONDS[0]
        return len(futures)

    def _send(self, rec: Any, keyed_by: Counter[str]) -> Any:
        assert self.producer is not None
        keyed = self.keyer(rec.value)
        keyed_by[keyed.keyed_by] += 1
        headers = list(rec.headers or [])
        headers += [
            (ORIGIN_HEADERS[0], rec.topic.encode()),
            (ORIGIN_HEADERS[1], b"%d" % rec.partition),
            (ORIGIN_HEADERS[2], b"%d" % rec.offset),
        ]
        value = rec.value
        if value is not None and len(value) > self.kafka.max_message_bytes:
            headers.append(("driftmon-truncated-from", str(len(value)).encode()))
            value = value[: self.kafka.max_message_bytes + 1]
        try:
            return self.producer.send(
                self.target,
                value=value,
                key=keyed.key,
                headers=headers,
                timestamp_ms=rec.timestamp if rec.timestamp and rec.timestamp > 0 else None,
            )
        except (KafkaError, ValueError, TypeError, AssertionError) as exc:
            return _Failed(exc)

    def _resend(self, batch: dict[TopicPartition, list[Any]], failed: list[Any]) -> None:
        """Nothing of the poll is committed: seek back to its first offsets and pause; the
        next poll produces it again (records already acknowledged become duplicates)."""
        assert self.consumer is not None
        self.counts.resends.inc()
        log.warning(
            "repartition send failed, the poll is re-sent",
            failed=len(failed),
            error=repr(failed[0].exception)[:300],
            retry_in=self._pause,
        )
        for tp, records in batch.items():
            self.consumer.seek(tp, records[0].offset)
        end = time.monotonic() + self._pause
        while not self.should_exit and time.monotonic() < end:
            time.sleep(0.05)
        self._pause = min(self._pause * 2, kafka_io.RETRY_BACKOFF_SECONDS[1])

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        for tp, offset in self._skipped.items():
            offsets.setdefault(tp, offset)
        self._skipped.clear()
        if not offsets:
            return
        commit = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        try:
            kafka_io.retry(
                "repartition commit",
                lambda: self.consumer.commit(commit),  # type: ignore[union-attr]
                metrics=self.metrics,
                stopping=lambda: self.should_exit,
            )
        except CommitFailedError as exc:
            # The partitions went to another member, which produces from the last commit
            # again: duplicates downstream, nothing lost.
            log.warning("repartition commit refused after a rebalance", error=str(exc)[:300])

    def _undecodable(self, topic: str, partition: int, offset: int, next_offset: int) -> None:
        # No value to forward: counted and skipped, as the daemon does with such a batch.
        self.metrics.messages_undecodable.labels(topic, "skip").inc()
        self._skipped[TopicPartition(topic, partition)] = next_offset


@dataclass(frozen=True, slots=True)
class _Failed:
    """A send the producer refused at once, shaped like its future."""

    exception: BaseException

    def succeeded(self) -> bool:
        return False
