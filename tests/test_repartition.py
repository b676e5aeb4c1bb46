"""The repartition stage's keying rule, and its commit-only-after-acknowledgement step on
stand-in clients (the real broker is in tests/integration/test_repartition.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from driftmon.decoders import DEFAULT_ENDPOINT_FROM
from driftmon.metrics import Metrics
from driftmon.repartition import FIXED_KEY, Keyed, Keyer, RepartitionStage
from driftmon.settings import InputSettings, KafkaSettings


def _native(endpoint: str, model: str = "m1") -> bytes:
    return json.dumps({"endpoint": endpoint, "model": model, "output": "hi"}).encode()


def _otlp(*services: str) -> bytes:
    """One OTLP JSON export: one resource (service.name) per service, one answer span each."""
    resources = []
    for i, service in enumerate(services):
        attributes = {
            "gen_ai.operation.name": {"stringValue": "chat"},
            "gen_ai.request.model": {"stringValue": "m1"},
        }
        span = {
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": f"{i:016x}",
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000000500000000",
            "attributes": [{"key": k, "value": v} for k, v in attributes.items()],
        }
        resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
        resources.append({"resource": resource, "scopeSpans": [{"spans": [span]}]})
    return json.dumps({"resourceSpans": resources}).encode()


def _keyer(fmt: str = "auto") -> Keyer:
    return Keyer(fmt, DEFAULT_ENDPOINT_FROM, max_bytes=1_000_000)


def test_native_messages_are_keyed_by_endpoint_not_model() -> None:
    keyer = _keyer("native")
    assert keyer(_native("chat", "m1")) == Keyed(b"chat", "endpoint")
    assert keyer(_native("chat", "m2")) == Keyed(b"chat", "endpoint")
    assert keyer(_native("search")) == Keyed(b"search", "endpoint")


def test_an_otlp_batch_goes_whole_under_its_first_endpoint() -> None:
    keyer = _keyer("auto")
    assert keyer(_otlp("chat", "chat")) == Keyed(b"chat", "endpoint")
    assert keyer(_otlp("search", "chat")) == Keyed(b"search", "mixed")


def test_a_message_seen_twice_gets_the_same_key() -> None:
    keyer = _keyer("otlp_json")
    assert keyer(_otlp("chat")) == keyer(_otlp("chat")) == Keyed(b"chat", "endpoint")


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[1, 2]",
        b'{"model": "m1", "output": "no endpoint"}',
        b'{"resourceSpans": []}',
        b"\n\x05trunc",  # an OTLP protobuf cut short
    ],
)
def test_a_message_without_an_event_gets_the_fixed_key(raw: bytes | None) -> None:
    assert _keyer("auto")(raw) == Keyed(FIXED_KEY, "none")


def test_a_message_over_the_limit_is_not_decoded() -> None:
    keyer = Keyer("native", DEFAULT_ENDPOINT_FROM, max_bytes=100)
    assert keyer(_native("chat") + b" " * 200) == Keyed(FIXED_KEY, "none")


def test_the_endpoint_follows_endpoint_from() -> None:
    raw = _otlp("chat")
    assert Keyer("otlp_json", ["gen_ai.request.model"], max_bytes=10_000)(raw).key == b"m1"


# -- one step, on stand-in clients ----------------------------------------------------
@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class _Future:
    def __init__(self, ok: bool) -> None:
        self.ok = ok
        self.exception = None if ok else KafkaTimeoutError("not acknowledged")

    def succeeded(self) -> bool:
        return self.ok


class _Producer:
    def __init__(self, fail_keys: set[bytes]) -> None:
        self.fail_keys = fail_keys
        self.sent: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = []
        self.flushes = 0

    def send(self, topic: str, *, value: bytes | None, key: bytes, headers: Any, **_: Any) -> Any:
        self.sent.append((key, value, headers))
        return _Future(key not in self.fail_keys)

    def flush(self, timeout: float) -> None:
        self.flushes += 1


class _Consumer:
    def __init__(self, batch: dict[TopicPartition, list[_Record]]) -> None:
        self.batch = batch
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[_Record]]:
        return self.batch

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _stage(
    consumer: _Consumer,
    producer: _Producer,
    max_bytes: int = 1_000_000,
    registry: CollectorRegistry | None = None,
) -> Any:
    settings = KafkaSettings(max_message_bytes=max_bytes)
    stage = RepartitionStage(
        settings,
        InputSettings(),
        "by-endpoint",
        Metrics(CollectorRegistry()),
        registry or CollectorRegistry(),
    )
    stage.consumer, stage.producer = consumer, producer
    stage._pause = 0.01
    return stage


def _batch() -> dict[TopicPartition, list[_Record]]:
    tp0, tp1 = TopicPartition("in", 0), TopicPartition("in", 1)
    return {
        tp0: [_Record("in", 0, 10, _native("chat")), _Record("in", 0, 11, b"garbage")],
        tp1: [_Record("in", 1, 5, _native("search"))],
    }


def test_offsets_are_committed_after_every_send_is_acknowledged() -> None:
    consumer, producer, registry = _Consumer(_batch()), _Producer(set()), CollectorRegistry()
    assert _stage(consumer, producer, registry=registry).step() == 3
    assert [key for key, _, _ in producer.sent] == [b"chat", b"", b"search"]
    assert producer.flushes == 1
    assert consumer.commits == [{TopicPartition("in", 0): 12, TopicPartition("in", 1): 6}]
    _, value, headers = producer.sent[1]
    assert value == b"garbage"
    assert ("driftmon-origin-partition", b"0") in headers
    assert ("driftmon-origin-offset", b"11") in headers
    counted = "driftmon_repartition_records_total"
    assert registry.get_sample_value(counted, {"keyed_by": "endpoint"}) == 2
    assert registry.get_sample_value(counted, {"keyed_by": "none"}) == 1


def test_a_failed_send_commits_nothing_and_re_sends_the_poll() -> None:
    consumer, producer, registry = _Consumer(_batch()), _Producer({b"search"}), CollectorRegistry()
    assert _stage(consumer, producer, registry=registry).step() == 0
    assert consumer.commits == []
    assert consumer.seeks == [(TopicPartition("in", 0), 10), (TopicPartition("in", 1), 5)]
    assert registry.get_sample_value("driftmon_repartition_resends_total") == 1


def test_a_commit_refused_after_a_rebalance_is_not_fatal() -> None:
    consumer, producer = _Consumer(_batch()), _Producer(set())

    def refused(offsets: dict[TopicPartition, Any]) -> None:
        raise CommitFailedError()

    consumer.commit = refused  # type: ignore[method-assign]
    assert _stage(consumer, producer).step() == 3  # logged; the new owner re-sends


def test_an_unreadable_batch_is_committed_past_with_the_next_poll() -> None:
    consumer, producer = _Consumer({}), _Producer(set())
    stage = _stage(consumer, producer)
    stage._undecodable("in", 2, 40, 45)
    assert stage.step() == 0
    assert consumer.commits == [{TopicPartition("in", 2): 45}]


def test_a_message_over_the_limit_goes_truncated_for_the_monitor_to_reject() -> None:
    tp = TopicPartition("in", 0)
    consumer = _Consumer({tp: [_Record("in", 0, 0, b"x" * 500)]})
    producer = _Producer(set())
    _stage(consumer, producer, max_bytes=100).step()
    ((key, value, headers),) = producer.sent
    assert key == b"" and value == b"x" * 101
    assert ("driftmon-truncated-from", b"500") in headers
