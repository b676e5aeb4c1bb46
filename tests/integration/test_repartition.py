"""The repartition stage on a real broker (tansu): an unkeyed producer spreads each endpoint
over 3 partitions; after the stage, every event of an endpoint is in one partition of the
repartition topic, and input offsets are committed only once the re-keyed records are
acknowledged (a stage killed between the two re-sends; nothing is lost)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from driftmon.demo.tansu import EmbeddedBroker
from driftmon.metrics import Metrics
from driftmon.repartition import RepartitionStage
from driftmon.settings import InputSettings, KafkaSettings
from tests.support import (
    DaemonProcess,
    consume_all,
    create_topic,
    daemon_settings,
    http_get,
    running,
    wait_for,
)

TOPIC = "unused"  # the broker fixture's one-partition topic
INPUT = "llm-in"
TARGET = "llm-by-endpoint"
ENDPOINTS = ("chat", "search", "summarise", "classify")
EVENTS = 240


def _settings(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=[bootstrap],
        topics=[INPUT],
        group_id="mon",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_records=100,
    )


def _produce_unkeyed(bootstrap: str) -> None:
    """Each endpoint's events over all 3 partitions (round robin), with no key, as a
    trace-keyed or random-partitioning producer leaves them; two model versions each."""
    create_topic(bootstrap, INPUT, partitions=3)
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5, acks="all")
    for i in range(EVENTS):
        body = {
            "id": f"e{i}",
            "endpoint": ENDPOINTS[i % len(ENDPOINTS)],
            "model": "m1" if i < EVENTS // 2 else "m2",
            "output": f"answer {i}",
        }
        producer.send(INPUT, value=json.dumps(body).encode(), partition=(i // 4) % 3)
    producer.send(INPUT, value=b"not json", partition=1)  # undecodable: forwarded, key ""
    producer.flush()
    producer.close()


def _committed(bootstrap: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group)
    try:
        return {p: consumer.committed(TopicPartition(INPUT, p)) for p in range(3)}
    finally:
        consumer.close(autocommit=False)


def _ids_by_partition(records: list[Any]) -> dict[str, set[int]]:
    partitions: dict[str, set[int]] = defaultdict(set)
    for rec in records:
        if rec.key:
            partitions[rec.key.decode()].add(rec.partition)
    return partitions


def _stage(bootstrap: str) -> RepartitionStage:
    registry = CollectorRegistry()
    return RepartitionStage(
        _settings(bootstrap), InputSettings(), TARGET, Metrics(registry), registry
    )


def _run_until_committed(stage: RepartitionStage, bootstrap: str) -> None:
    stage.start()
    try:
        assert stage.topic_ready.wait(30), stage.error
        wait_for(
            lambda: (
                sum(v or 0 for v in _committed(bootstrap, stage.group_id).values()) == EVENTS + 1
            ),
            timeout=40,
            every=0.5,
        )
    finally:
        stage.stop()
    assert stage.error is None
    assert stage.thread is not None and not stage.thread.is_alive()


def test_each_endpoint_lands_in_one_partition(broker: EmbeddedBroker) -> None:
    _produce_unkeyed(broker.bootstrap)
    spread = defaultdict(set)
    for rec in consume_all(broker.bootstrap, INPUT, idle=1.0):
        if rec.value != b"not json":
            spread[json.loads(rec.value)["endpoint"]].add(rec.partition)
    assert all(len(parts) == 3 for parts in spread.values())  # the producer spread them

    stage = _stage(broker.bootstrap)
    _run_until_committed(stage, broker.bootstrap)

    out = consume_all(broker.bootstrap, TARGET, idle=1.0)
    assert len({rec.partition for rec in out}) > 1  # created with the inputs' 3 partitions
    assert {r.partition for r in out} <= {0, 1, 2}
    by_endpoint = _ids_by_partition(out)
    assert set(by_endpoint) == set(ENDPOINTS)
    assert all(len(parts) == 1 for parts in by_endpoint.values()), by_endpoint
    ids = [json.loads(r.value)["id"] for r in out if r.key]
    assert sorted(ids) == sorted(f"e{i}" for i in range(EVENTS))  # each once, none lost
    (bad,) = [r for r in out if not r.key]
    assert bad.value == b"not json" and bad.key == b""
    # An endpoint's events from one input partition keep their order.
    for endpoint in ENDPOINTS:
        seen = [int(json.loads(r.value)["id"][1:]) for r in out if r.key == endpoint.encode()]
        for source in range(3):
            mine = [i for i in seen if (i // 4) % 3 == source]
            assert mine == sorted(mine)


KILLED_BETWEEN_PRODUCE_AND_COMMIT = """
import os, signal, sys
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from driftmon.metrics import Metrics
from driftmon.repartition import RepartitionStage
from driftmon.settings import InputSettings, KafkaSettings

registry = CollectorRegistry()
stage = RepartitionStage(
    KafkaSettings.model_validate_json(sys.argv[1]), InputSettings(), sys.argv[2],
    Metrics(registry), registry,
)
commit = stage._commit
flushed = []
flush = KafkaProducer.flush

def flush_seen(self, timeout=None):
    flush(self, timeout)
    flushed.append(True)

KafkaProducer.flush = flush_seen

def killed(offsets):
    if offsets:  # the poll's records are produced and acknowledged: die before the commit
        assert flushed, "commit before the producer flush"
        print(sum(offsets.values()), flush=True)  # the first poll: every partition from 0
        os.kill(os.getpid(), signal.SIGKILL)
    commit(offsets)

stage._commit = killed
stage.run()
"""


def test_a_stage_killed_before_its_commit_re_sends_and_loses_nothing(
    broker: EmbeddedBroker,
) -> None:
    _produce_unkeyed(broker.bootstrap)
    settings = _settings(broker.bootstrap)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_BETWEEN_PRODUCE_AND_COMMIT,
            settings.model_dump_json(),
            TARGET,
        ],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    before = consume_all(broker.bootstrap, TARGET, idle=1.0)
    assert (
        len(before) == int(proc.stdout.splitlines()[-1]) > 0
    )  # the poll: produced and acknowledged...
    assert set(_committed(broker.bootstrap, "mon-repartition").values()) == {
        None
    }  # ...not committed

    _run_until_committed(_stage(broker.bootstrap), broker.bootstrap)

    out = consume_all(broker.bootstrap, TARGET, idle=1.0)
    assert len(out) == EVENTS + 1 + len(before)  # the killed poll was produced again
    ids = {json.loads(r.value)["id"] for r in out if r.key}
    assert ids == {f"e{i}" for i in range(EVENTS)}  # none lost
    assert all(len(parts) == 1 for parts in _ids_by_partition(out).values())


def test_the_daemon_monitors_the_re_keyed_topic_and_sees_each_transition_once(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """End to end: ``kafka.repartition_topic`` set, the daemon runs the stage and monitors
    its topic. Unkeyed, each partition would hold a third of an endpoint's old version (10
    answers, too few to open a transition); re-keyed, every endpoint gets its one
    m1 → m2 transition, and every record is counted once."""
    source, target = "llm-in-daemon", "llm-by-endpoint-daemon"
    create_topic(broker.bootstrap, source, partitions=3)
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], linger_ms=5, acks="all")

    def send(first: int, last: int) -> None:
        for i in range(first, last):
            body = {
                "endpoint": ENDPOINTS[i % len(ENDPOINTS)],
                "model": "m1" if i < EVENTS // 2 else "m2",
                "output": "word " * (10 + i % 7),
            }
            producer.send(source, value=json.dumps(body).encode(), partition=(i // 4) % 3)
        producer.flush()

    send(0, EVENTS // 2)  # the old version first: the upgrade comes after it everywhere
    settings = daemon_settings(
        broker.bootstrap,
        source,
        tmp_path / "state",
        "mon-e2e",
        {},
        kafka={"repartition_topic": target},
    )
    with running(DaemonProcess(tmp_path, settings)) as daemon:
        daemon.wait_ready(timeout=90)
        wait_for(lambda: daemon.events_seen() >= EVENTS // 2, timeout=90, every=0.5)
        send(EVENTS // 2, EVENTS)
        producer.send(source, value=b"not json", partition=1)
        producer.flush()
        producer.close()
        wait_for(lambda: daemon.events_seen() >= EVENTS + 1, timeout=90, every=0.5)
        assert daemon.events_seen() == EVENTS + 1

        def transitions() -> list[tuple[str, str, str]]:
            status, body = http_get(f"{daemon.url}/transitions")
            assert status == 200
            return sorted(
                (t["endpoint"], t["from_model"], t["to_model"])
                for t in json.loads(body)["transitions"]
            )

        expected = sorted((e, "m1", "m2") for e in ENDPOINTS)
        with contextlib.suppress(AssertionError):  # listed at the next publish or refresh
            wait_for(lambda: transitions() == expected, timeout=30, every=0.5)
        assert transitions() == expected, daemon.tail()
        assert b'driftmon_events_rejected_total{reason="not_json"} 1.0' in daemon.metrics()
