"""State in a compacted Kafka topic (``state.backend: kafka``): chunking, reassembly,
refusal of a non-compacted topic, unreadable snapshots; pure parts first, then on a real
Kafka-protocol broker (tansu)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon.checkpoint import (
    CHUNK_COUNT_HEADER,
    CHUNK_INDEX_HEADER,
    SNAPSHOT_ID_HEADER,
    Checkpoint,
    CorruptCheckpointError,
    KafkaCheckpointStore,
    SnapshotAssembler,
    StateTopicError,
    check_cleanup_policy,
    chunks,
    encode,
    split_state_key,
    state_key,
)
from driftmon.config import monitor_config
from driftmon.core.monitor import Detection, Monitor, detection_id
from driftmon.daemon import EXIT_CONFIG
from driftmon.demo.synthetic import generate
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.settings import Settings
from tests.support import (
    DaemonProcess,
    create_topic,
    daemon_settings,
    metric,
    produce,
    running,
    wait_for,
)


def headers(snapshot: bytes, index: int, count: int) -> dict[str, bytes]:
    return {
        SNAPSHOT_ID_HEADER: snapshot,
        CHUNK_INDEX_HEADER: str(index).encode(),
        CHUNK_COUNT_HEADER: str(count).encode(),
    }


def feed(assembler: SnapshotAssembler, snapshot: bytes, data: bytes, size: int) -> None:
    pieces = chunks(data, size)
    for i, piece in enumerate(pieces):
        assembler.add(state_key("g", "t", 0, i), piece, headers(snapshot, i, len(pieces)))


# -- pure ------------------------------------------------------------------------------
def test_keys_parse_from_the_right_whatever_the_group_name() -> None:
    assert state_key("a/b#1", "llm.outputs", 3) == b"a/b#1/llm.outputs/3"
    assert split_state_key(state_key("a/b#1", "llm.outputs", 3, 2)) == ("a/b#1/llm.outputs/3", 2)
    assert split_state_key(b"g/t/0") == ("g/t/0", 0)
    assert split_state_key(b"g/t/0#0") is None  # chunk 0 has no suffix
    assert split_state_key(b"\xff") is None


def test_the_newest_complete_snapshot_wins_and_a_half_written_one_is_ignored() -> None:
    a = SnapshotAssembler({"g/t/0"})
    feed(a, b"s1", b"first snapshot", 4)
    feed(a, b"s2", b"second snapshot", 4)
    assert a.complete["g/t/0"] == b"second snapshot"
    # A crash after the first chunk of a third: the second stays the newest complete one.
    a.add(state_key("g", "t", 0), b"thir", headers(b"s3", 0, 4))
    assert a.complete["g/t/0"] == b"second snapshot"


def test_a_tombstone_removes_the_snapshot_and_other_keys_are_ignored() -> None:
    a = SnapshotAssembler({"g/t/0"})
    feed(a, b"s1", b"abcdef", 2)
    a.add(state_key("g", "t", 1), b"x", headers(b"s9", 0, 1))
    a.add(state_key("g", "t", 0), None, {})
    assert a.complete == {}


def test_a_chunk_without_headers_is_reported_not_raised() -> None:
    a = SnapshotAssembler({"g/t/0"})
    a.add(state_key("g", "t", 0), b"x", {})
    a.add(state_key("g", "t", 0, 1), b"x", headers(b"s1", 0, 2))  # index disagrees with key
    assert "g/t/0" in a.malformed and a.complete == {}


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete, compact", None])
def test_compacted_topics_are_accepted(policy: str | None) -> None:
    check_cleanup_policy("driftmon.state", policy)


def test_a_delete_only_topic_is_refused_with_the_fix() -> None:
    with pytest.raises(StateTopicError, match=r"cleanup\.policy=delete.*must be compact"):
        check_cleanup_policy("driftmon.state", "delete")


def test_detection_ids_are_stable_and_differ_by_each_field() -> None:
    base = ("sql", "m1", "length", "page_hinkley", 812)
    assert detection_id(*base) == detection_id(*base)
    assert len(detection_id(*base)) == 16
    others = {detection_id(*base[:i], "x", *base[i + 1 :]) for i in range(4)}
    others.add(detection_id(*base[:4], 813))
    assert detection_id(*base) not in others and len(others) == 5
    d = Detection("sql", "m1", "length", "page_hinkley", 1.0, 2.0, 3.0, 4.0, 812, None)
    assert d.report()["detection_id"] == detection_id(*base)


# -- on the broker -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_file=log) as b:
        yield b


def store_for(broker: EmbeddedBroker, topic: str, chunk_bytes: int = 1024) -> KafkaCheckpointStore:
    store = KafkaCheckpointStore(
        {"bootstrap_servers": [broker.bootstrap]},
        topic=topic,
        group="g1",
        chunk_bytes=chunk_bytes,
        topic_partitions=3,
    )
    store.connect()
    return store


def big_monitor_snapshot() -> bytes:
    monitor = Monitor(monitor_config(Settings(embeddings={"enabled": False})), lambda _: 20)
    for i in range(400):
        monitor.update(f"ep{i % 40}", "m", {"length": float(i % 7), "refusal": 0.0}, None)
    return monitor.snapshot()


@pytest.mark.integration
def test_a_snapshot_larger_than_a_message_restores_through_chunks(broker: EmbeddedBroker) -> None:
    store = store_for(broker, "state.chunks")
    state = big_monitor_snapshot()
    assert len(state) > 10 * store.chunk_bytes
    drifts = ()
    try:
        store.save(Checkpoint("llm.outputs", 2, 40, b"old", 1.0))
        store.save(Checkpoint("llm.outputs", 2, 9000, state, 2.0, drifts))
        store.save(Checkpoint("llm.outputs", 5, 7, b"other partition", 3.0))
    finally:
        store.close()
    # A new replica (a new store, nothing cached) restores it from the topic alone.
    other = store_for(broker, "state.chunks")
    try:
        other.prefetch([("llm.outputs", 2), ("llm.outputs", 5), ("llm.outputs", 9)])
        loaded = other.load("llm.outputs", 2)
        assert loaded is not None and (loaded.offset, loaded.state) == (9000, state)
        restored = Monitor(monitor_config(Settings(embeddings={"enabled": False})), lambda _: 20)
        restored.restore(loaded.state)
        assert sorted(k.events for k in restored.key_states()) == [10] * 40
        assert other.load("llm.outputs", 5) is not None
        assert other.load("llm.outputs", 9) is None
        # A smaller snapshot, then delete: the tombstones leave nothing to restore.
        other.save(Checkpoint("llm.outputs", 2, 9001, b"small", 4.0))
        small = other.load("llm.outputs", 2)
        assert small is not None and small.state == b"small"
        other.delete("llm.outputs", 2)
        assert other.load("llm.outputs", 2) is None
    finally:
        other.close()


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["flipped", "foreign_format", "no_headers"])
def test_an_unreadable_snapshot_is_refused_with_a_reason(
    broker: EmbeddedBroker, damage: str
) -> None:
    topic = f"state.bad-{damage.replace('_', '-')}"
    store = store_for(broker, topic)
    try:
        data = bytearray(encode(Checkpoint("llm.outputs", 0, 10, b"state", 1.0)))
        if damage == "flipped":
            data[-1] ^= 1
        elif damage == "foreign_format":
            data[4:6] = (99).to_bytes(2, "big")
        hdrs = [] if damage == "no_headers" else list(headers(b"s1", 0, 1).items())
        producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
        target = store.state_partition("llm.outputs", 0)
        producer.send(
            topic,
            key=state_key("g1", "llm.outputs", 0),
            value=bytes(data),
            headers=hdrs,
            partition=target,
        ).get(timeout=10)
        producer.close()
        with pytest.raises(CorruptCheckpointError):
            store.load("llm.outputs", 0)
    finally:
        store.close()


@pytest.mark.integration
def test_a_state_topic_that_is_not_compacted_is_refused(broker: EmbeddedBroker) -> None:
    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap])
    admin.create_topics([NewTopic("state.plain", 1, 1, topic_configs={"cleanup.policy": "delete"})])
    admin.close()
    with pytest.raises(StateTopicError, match="must be compact"):
        store_for(broker, "state.plain")


ENDPOINTS = {"sql-assistant": {"format": "json"}}


@pytest.mark.integration
def test_the_daemon_starts_a_partition_cold_on_a_foreign_snapshot_and_counts_it(
    tmp_path: Path,
) -> None:
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
        create_topic(b.bootstrap, "llm-outputs", partitions=1)
        lines = list(generate(600, n_keys=2, seed=1))
        produce(b.bootstrap, "llm-outputs", lines)
        cfg = daemon_settings(
            b.bootstrap,
            "llm-outputs",
            tmp_path / "state",
            "grp",
            ENDPOINTS,
            state={"backend": "kafka", "topic": "driftmon.state", "chunk_bytes": 4096},
        )
        # A snapshot some other program wrote under the partition's key.
        store = KafkaCheckpointStore(
            {"bootstrap_servers": [b.bootstrap]},
            topic="driftmon.state",
            group="grp",
            chunk_bytes=4096,
        )
        store.connect()
        store.save(Checkpoint("llm-outputs", 0, 300, b"not a monitor snapshot", 1.0))
        store.close()
        with running(DaemonProcess(tmp_path, cfg)) as daemon:
            daemon.wait_ready()
            wait_for(lambda: daemon.events_seen() >= len(lines), timeout=60, every=0.3)
            body = daemon.metrics()
            assert metric(body, "driftmon_offset_resets_total", reason="state_unreadable") == 1
            # Cold, from the committed offset (none: the start), not from offset 300.
            assert daemon.events_seen() == len(lines)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(timeout=40) == 0, daemon.tail()
        assert "checkpoint not usable, starting fresh" in daemon.log.read_text()
        # Its own snapshot replaced the foreign one.
        again = KafkaCheckpointStore(
            {"bootstrap_servers": [b.bootstrap]},
            topic="driftmon.state",
            group="grp",
            chunk_bytes=4096,
        )
        again.connect()
        saved = again.load("llm-outputs", 0)
        again.close()
        assert saved is not None and saved.offset == len(lines)


@pytest.mark.integration
def test_the_daemon_refuses_a_state_topic_that_is_not_compacted(tmp_path: Path) -> None:
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
        create_topic(b.bootstrap, "llm-outputs", partitions=1)
        admin = KafkaAdminClient(bootstrap_servers=[b.bootstrap])
        admin.create_topics(
            [NewTopic("driftmon.state", 1, 1, topic_configs={"cleanup.policy": "delete"})]
        )
        admin.close()
        cfg = daemon_settings(
            b.bootstrap,
            "llm-outputs",
            tmp_path / "state",
            "grp",
            ENDPOINTS,
            state={"backend": "kafka"},
        )
        with running(DaemonProcess(tmp_path, cfg)) as daemon:
            assert daemon.wait(timeout=60) == EXIT_CONFIG
        lines = [json.loads(x) for x in daemon.log.read_text().splitlines() if x.startswith("{")]
        assert any("must be compact" in str(x.get("error")) for x in lines), daemon.tail()
