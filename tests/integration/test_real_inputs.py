"""What real producers put on Kafka, read from a real broker (tansu): librdkafka batches in
every codec, OTLP protobuf from the OpenTelemetry SDK's encoders, LiteLLM payloads, and a
batch that cannot be decompressed (skipped by :func:`driftmon.kafka.poll_records`)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import confluent_kafka
import kafka.codec
import kafka.record.default_records as default_records
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.kafka import poll_records
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.litellm_support import payloads_for
from tests.otel_support import record
from tests.support import (
    DaemonProcess,
    consume_all,
    create_topic,
    daemon_settings,
    metric,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

TOPIC = "llm-outputs"
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
N_EVENTS = 20_000
ENDPOINTS = {"sql-assistant": {"format": "json"}}


def produce_librdkafka(
    bootstrap: str, topic: str, values: list[bytes], compression: str, partition: int = 0
) -> None:
    """``values`` through librdkafka (confluent-kafka) with ``compression.type``."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": compression, "linger.ms": 20}
    )
    for value in values:
        while True:
            try:
                producer.produce(topic, value, partition=partition)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
    assert producer.flush(60) == 0


def produce_corrupt_lz4(bootstrap: str, topic: str, values: list[bytes], partition: int) -> None:
    """One lz4 batch whose compressed payload is garbage (CRC valid): the producer's lz4
    encoder is replaced while it builds the batch, so the bytes on the broker are bad."""
    original = default_records.lz4_encode
    default_records.lz4_encode = lambda data: b"\x04\x22\x4d\x18not an lz4 frame"
    try:
        producer = KafkaProducer(
            bootstrap_servers=[bootstrap], compression_type="lz4", linger_ms=50
        )
        for value in values:
            producer.send(topic, value, partition=partition)
        producer.flush()
        producer.close()
    finally:
        default_records.lz4_encode = original


def read_all(
    consumer: KafkaConsumer, want: int, skipped: list[tuple[str, int, int, int]]
) -> dict[int, list[tuple[int, bytes]]]:
    """Poll through :func:`poll_records` until ``want`` records are read (or 60 s pass)."""
    got: dict[int, list[tuple[int, bytes]]] = {}
    deadline = time.monotonic() + 60
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        batch = poll_records(consumer, 500, 500, lambda *where: skipped.append(where))
        for tp, records in batch.items():
            got.setdefault(tp.partition, []).extend((r.offset, r.value) for r in records)
    return got


@pytest.fixture
def consumer(broker: EmbeddedBroker) -> Iterator[KafkaConsumer]:
    c = KafkaConsumer(bootstrap_servers=[broker.bootstrap], enable_auto_commit=False)
    yield c
    c.close()


def values(prefix: str, n: int = 5) -> list[bytes]:
    # Compressible: librdkafka sends a batch uncompressed when compression would not help.
    return [f"{prefix}{i} {'compressible ' * 40}".encode() for i in range(n)]


# -- a batch that cannot be decoded ----------------------------------------------------
def test_a_batch_that_cannot_be_decompressed_is_skipped_and_reading_goes_on(broker, consumer):
    create_topic(broker.bootstrap, "mixed", partitions=2)
    produce_librdkafka(broker.bootstrap, "mixed", values("a"), "none")  # offsets 0-4
    produce_corrupt_lz4(broker.bootstrap, "mixed", values("b"), partition=0)  # 5-9
    produce_librdkafka(broker.bootstrap, "mixed", values("c"), "lz4")  # 10-14
    produce_librdkafka(broker.bootstrap, "mixed", values("d"), "zstd")  # 15-19
    produce_librdkafka(broker.bootstrap, "mixed", values("e"), "gzip", partition=1)
    tps = [TopicPartition("mixed", 0), TopicPartition("mixed", 1)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    skipped: list[tuple[str, int, int, int]] = []

    got = read_all(consumer, 20, skipped)

    assert got[0] == list(enumerate(values("a"))) + list(
        zip(range(10, 20), values("c") + values("d"), strict=True)
    )
    assert got[1] == list(enumerate(values("e")))
    assert skipped == [("mixed", 0, 5, 10)]  # once, where it starts, and where reading resumed
    assert consumer.position(tps[0]) == 20

    # A position inside the bad batch (a committed offset) skips to the batch's end too.
    consumer.seek(tps[0], 7)
    skipped.clear()
    assert read_all(consumer, 10, skipped)[0] == list(
        zip(range(10, 20), values("c") + values("d"), strict=True)
    )
    assert skipped == [("mixed", 0, 7, 10)]


def test_a_codec_kafka_python_lacks_is_skipped_not_a_crash_loop(broker, consumer, monkeypatch):
    # The crash loop of issue 13: zstd batches and no zstd library (UnsupportedCodecError).
    produce_librdkafka(broker.bootstrap, TOPIC, values("a"), "gzip")
    produce_librdkafka(broker.bootstrap, TOPIC, values("b"), "zstd")
    produce_librdkafka(broker.bootstrap, TOPIC, values("c"), "snappy")
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    skipped: list[tuple[str, int, int, int]] = []

    got = read_all(consumer, 10, skipped)

    assert got[0] == list(enumerate(values("a"))) + list(
        zip(range(10, 15), values("c"), strict=True)
    )
    assert skipped == [(TOPIC, 0, 5, 10)]


# -- every codec, through the daemon ----------------------------------------------------
def detections_by_topic(broker: EmbeddedBroker) -> dict[str, list[tuple[int, str, str, str]]]:
    seen: dict[str, set[tuple[int, str, str, str]]] = {}
    for rec in consume_all(broker.bootstrap, "driftmon.detections"):
        d = json.loads(rec.value)
        seen.setdefault(d["topic"], set()).add(
            (d["offset"], d["endpoint"], d["feature"], d["detector"])
        )
    return {topic: sorted(found) for topic, found in seen.items()}


def test_librdkafka_batches_in_every_codec_give_the_detections_of_replay(broker, tmp_path):
    upgrade = Upgrade(endpoint="sql-assistant", at_event=N_EVENTS // 2)
    lines = list(generate(N_EVENTS, n_keys=4, seed=3, upgrade=upgrade))
    topics = [f"llm-{codec}" for codec in CODECS]
    for topic, codec in zip(topics, CODECS, strict=True):
        create_topic(broker.bootstrap, topic)
        produce_librdkafka(broker.bootstrap, topic, [line.encode() for line in lines], codec)
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = replay([str(path)], Settings(endpoints=ENDPOINTS, embeddings={"enabled": False}))
    expected = sorted((d.event_index, d.endpoint, d.feature, d.detector) for d in result.detections)
    assert expected, "the upgrade must be detected"

    cfg = daemon_settings(
        broker.bootstrap, topics[0], tmp_path / "state", "driftmon-codecs", ENDPOINTS
    )
    cfg["kafka"]["topics"] = topics
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()

        def caught_up() -> bool:
            body = daemon.metrics()
            return all(
                metric(body, "driftmon_consumer_lag", topic=t, partition="0") == 0 for t in topics
            )

        wait_for(caught_up, timeout=240, every=1.0)
        body = daemon.metrics()
        assert metric(body, "driftmon_events_accepted_total") == N_EVENTS * len(CODECS)
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
    assert detections_by_topic(broker) == dict.fromkeys(topics, expected)


# -- OTLP protobuf and LiteLLM, through the daemon ---------------------------------------
def litellm_payloads(endpoint: str) -> list[bytes]:
    """StandardLoggingPayloads of two real litellm calls (``mock_response``: no network)."""
    return [json.dumps(p).encode() for p in payloads_for(endpoint)]


def with_one_bad_span(raw: bytes) -> bytes:
    """The batch with its second span's output token count made a string (a wrong type)."""
    request = ExportTraceServiceRequest.FromString(raw)
    spans = request.resource_spans[0].scope_spans[0].spans
    assert len(spans) == 3
    for attr in spans[1].attributes:
        if attr.key == "gen_ai.usage.output_tokens":
            attr.value.string_value = "seven"
    return bytes(request.SerializeToString())


def test_otlp_protobuf_and_litellm_payloads_are_accepted_by_the_daemon(broker, tmp_path):
    with_text = record("span_only", calls=3, service="support-chat").traces_proto()
    content_less = record("no_content", calls=2, service="billing-bot").traces_proto()
    bad = with_one_bad_span(record("span_only", calls=3, service="support-chat").traces_proto())
    messages = [with_text, content_less, bad, *litellm_payloads("routing")]
    produce_librdkafka(broker.bootstrap, TOPIC, messages, "lz4")

    cfg = daemon_settings(broker.bootstrap, TOPIC, tmp_path / "state", "driftmon-otlp", {})
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()

        def events(endpoint: str, model: str) -> float | None:
            return metric(daemon.metrics(), "driftmon_events_total", endpoint=endpoint, model=model)

        # The per-key series are published by the periodic metrics refresh.
        wait_for(lambda: events("routing", "gpt-4o") == 2, timeout=60, every=0.5)
        body = daemon.metrics()

        assert events("support-chat", "gpt-4o-2024-08-06") == 5
        assert events("billing-bot", "gpt-4o-2024-08-06") == 2
    assert metric(body, "driftmon_events_accepted_total") == 9
    assert metric(body, "driftmon_events_rejected_total", reason="bad_type") == 1
    dead = consume_all(broker.bootstrap, "driftmon.dead-letter")
    assert len(dead) == 1, [r.headers for r in dead]
    headers = dict(dead[0].headers)
    assert headers["driftmon-reason"] == b"bad_type"
    assert headers["driftmon-field"] == b"gen_ai.usage.output_tokens"
    assert headers["driftmon-source-offset"] == b"2"
    assert headers["driftmon-detail"].startswith(b"1 of 3 items rejected")
    assert dead[0].value == bad


def test_the_daemon_skips_a_batch_it_cannot_decompress_and_commits_past_it(broker, tmp_path):
    lines = [line.encode() for line in generate(300, n_keys=2, seed=1)]
    produce_librdkafka(broker.bootstrap, TOPIC, lines[:200], "lz4")
    produce_corrupt_lz4(broker.bootstrap, TOPIC, lines[200:], partition=0)  # the last batches
    cfg = daemon_settings(broker.bootstrap, TOPIC, tmp_path / "state", "driftmon-bad", ENDPOINTS)

    def undecodable(body: bytes) -> float | None:
        return metric(body, "driftmon_messages_undecodable_total", topic=TOPIC, action="skip")

    for run in (1, 2):
        with running(DaemonProcess(tmp_path, cfg)) as daemon:
            daemon.wait_ready()
            if run == 1:
                wait_for(lambda: (undecodable(daemon.metrics()) or 0) >= 1, timeout=60)
                wait_for(lambda: caught_up(daemon), timeout=60)
                assert metric(daemon.metrics(), "driftmon_events_accepted_total") == 200
                log = daemon.log.read_text()
                assert '"event": "record batch could not be decoded, skipped"' in log
                assert lines[200].decode()[:40] not in log  # never the content
            else:  # the checkpoint committed past the bad batch: not met again
                time.sleep(3)
                wait_for(lambda: caught_up(daemon), timeout=60)
                assert not undecodable(daemon.metrics())
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(timeout=40) == 0, daemon.tail()


def caught_up(daemon: DaemonProcess) -> bool:
    return metric(daemon.metrics(), "driftmon_consumer_lag", topic=TOPIC, partition="0") == 0
