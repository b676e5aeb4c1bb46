"""Three daemon replicas in one consumer group (issue 15's acceptance test).

An **unkeyed** producer spreads every endpoint over a 6-partition topic; each replica runs
the repartition stage (``kafka.repartition_topic``) and monitors the re-keyed topic, with
``state.backend: kafka``. Mid-stream, the replica that owns the upgraded endpoint is killed
with SIGKILL and a new one started; then every replica is restarted in turn (SIGTERM, one
at a time). At the end:

- the detections (by ``detection_id``) equal one uninterrupted replay of the re-keyed
  topic, and no id is produced twice;
- each drifting feature reached a real Alertmanager once and resolved once (counted from
  the notifications Alertmanager sent to a webhook), the unchanged endpoints never;
- every replica read its partitions to the end (``driftmon_consumer_lag`` 0) and, once
  stopped, both consumer groups (the stage's on the input, the monitor's on the re-keyed
  topic) have committed every offset: lag 0 in Kafka.

Why the reference is a replay of the re-keyed topic and not of the produced lines: with
no key, the order of one endpoint's events across the 6 input partitions is whatever the
stages' polls made of it, so the re-keyed topic is the one order every replica saw; and a
stage killed between producing and committing re-sends its poll (at-least-once, see
docs/scaling.md), which the monitor then sees twice, as a replay of the topic does.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.support import (
    Alertmanager,
    DaemonProcess,
    consume_all,
    create_topic,
    daemon_settings,
    metric,
    needs_alertmanager,
    wait_for,
)

pytestmark = [pytest.mark.integration, needs_alertmanager]

TOPIC = "llm-raw"
REKEYED = "llm-by-endpoint"
PARTITIONS = 6
GROUP = "driftmon-three"
ENDPOINTS = {"sql-assistant": {"format": "json"}}
DRIFTING = "sql-assistant"
# Alerts resolve after 100 quiet events, at once (no minimum time active), and are re-sent
# every 10 s (Alertmanager keeps one 40 s past its last send): a hand-off that left an alert
# unsent for 40 s would show as a second firing notification.
ALERTS = {"resend_interval_seconds": 10, "min_active_seconds": 0, "resolve_after_quiet_events": 100}


UPGRADE_AT = 3800  # generate()'s line index


def stream() -> tuple[list[str], int]:
    """The answers (no feedback events), and the index of the first after the upgrade."""
    lines = list(
        generate(7600, n_keys=4, seed=3, upgrade=Upgrade(endpoint=DRIFTING, at_event=UPGRADE_AT))
    )
    answer = [json.loads(x).get("kind") != "feedback" for x in lines]
    return [x for x, a in zip(lines, answer, strict=True) if a], sum(answer[:UPGRADE_AT])


def produce_unkeyed(bootstrap: str, lines: list[str], rng: random.Random) -> None:
    """No key, a random partition per record: an endpoint's events land everywhere."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5, acks="all")
    for line in lines:
        producer.send(TOPIC, value=line.encode(), partition=rng.randrange(PARTITIONS))
    producer.flush()
    producer.close()


class Webhook:
    """What Alertmanager notified: one ``(status, endpoint, model, feature)`` per alert in
    each notification."""

    def __init__(self) -> None:
        self.notified: list[tuple[str, str, str, str]] = []
        received = self.notified

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body["alerts"]:
                    labels = alert["labels"]
                    received.append(
                        (alert["status"], labels["endpoint"], labels["model"], labels["feature"])
                    )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    @contextmanager
    def serving(self) -> Iterator[Webhook]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()

    def count(self, status: str) -> Counter[tuple[str, str, str]]:
        return Counter(n[1:] for n in list(self.notified) if n[0] == status)


def alertmanager_config(webhook: str) -> str:
    # One group per alert, notified at once, never repeated while unchanged: every firing
    # notification after the first is an alert that went away and came back.
    return (
        "route:\n  receiver: hook\n  group_by: [alertname, endpoint, model, feature]\n"
        "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 24h\n"
        f"receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{webhook}'\n"
        "        send_resolved: true\n"
    )


def lag(bootstrap: str, group: str, topic: str) -> int | None:
    """End offsets minus the group's committed offsets, over the topic (None: a partition
    with records and no commit)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        total = 0
        for tp in tps:
            committed = consumer.committed(tp)
            if committed is None:
                if ends[tp]:
                    return None
                continue
            total += max(0, ends[tp] - committed)
        return total
    finally:
        consumer.close(autocommit=False)


def settled(bootstrap: str, live: list[DaemonProcess]) -> bool:
    """Every input record re-keyed (the stage's commits), and every partition of the
    re-keyed topic that holds records owned by one live replica that read it to the end."""
    if lag(bootstrap, f"{GROUP}-repartition", TOPIC) != 0:
        return False
    lags: dict[int, float | None] = {}
    for daemon in live:
        body = daemon.metrics()
        for p in range(PARTITIONS):
            value = metric(body, "driftmon_consumer_lag", topic=REKEYED, partition=str(p))
            if value is not None:
                if p in lags:
                    return False  # mid-rebalance
                lags[p] = value
    return set(lags) >= with_records(bootstrap, REKEYED) and not any(lags.values())


def with_records(bootstrap: str, topic: str) -> set[int]:
    """The topic's partitions that hold records (an empty one may show no lag at all)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap])
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return {tp.partition for tp, end in consumer.end_offsets(tps).items() if end}
    finally:
        consumer.close()


def reference(records: list[Any], tmp_path: Path) -> Any:
    """One uninterrupted replay of the re-keyed topic: an endpoint lives in one partition,
    read in offset order."""
    path = tmp_path / "rekeyed.jsonl"
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    path.write_text("".join(r.value.decode() + "\n" for r in ordered))
    return replay(
        [str(path)],
        Settings(endpoints=ENDPOINTS, embeddings={"enabled": False}, alertmanager=ALERTS),
    )


def owned(daemon: DaemonProcess) -> set[int]:
    body = daemon.metrics()
    return {
        p
        for p in range(PARTITIONS)
        if metric(body, "driftmon_consumer_lag", topic=REKEYED, partition=str(p)) is not None
    }


def test_three_replicas_survive_a_kill_and_a_rolling_restart(tmp_path: Path) -> None:
    lines, upgrade = stream()
    chunks = [lines[:3000], lines[3000:upgrade], lines[upgrade:4300], lines[4300:4900]]
    chunks += [lines[4900:5300], lines[5300:5700], lines[5700:]]
    rng = random.Random(15)
    webhook = Webhook()
    with ExitStack() as stack:
        stack.enter_context(webhook.serving())
        am = Alertmanager(tmp_path / "am", config=alertmanager_config(webhook.url)).start()
        stack.callback(am.stop)
        b = stack.enter_context(EmbeddedBroker(log_file=tmp_path / "broker.log"))
        create_topic(b.bootstrap, TOPIC, partitions=PARTITIONS)

        started: list[DaemonProcess] = []

        def start(name: str) -> DaemonProcess:
            workdir = tmp_path / name
            workdir.mkdir()
            cfg = daemon_settings(
                b.bootstrap,
                TOPIC,
                workdir / "state",
                GROUP,
                ENDPOINTS,
                kafka={"repartition_topic": REKEYED},
                # Checkpoints (and offset commits) only when partitions are revoked and
                # at shutdown: the victim dies with detections emitted after its last one.
                state={
                    "backend": "kafka",
                    "checkpoint_every_events": 1_000_000,
                    "checkpoint_every_seconds": 3600,
                },
                alertmanager={"urls": [am.url], **ALERTS},
            )
            daemon = DaemonProcess(workdir, cfg).start()
            stack.callback(daemon.stop)
            started.append(daemon)
            daemon.wait_ready(timeout=120)
            return daemon

        produce_unkeyed(b.bootstrap, chunks[0], rng)
        live = [start(name) for name in ("a", "b", "c")]
        wait_for(lambda: settled(b.bootstrap, live), timeout=180, every=1.0)

        # Every answer of the old version re-keyed before the first of the new one: with no
        # key, the stages would otherwise interleave the two versions around the switch
        # (the reference replay would still agree, but the drifts could fire twice).
        produce_unkeyed(b.bootstrap, chunks[1], rng)
        wait_for(lambda: lag(b.bootstrap, f"{GROUP}-repartition", TOPIC) == 0, timeout=120)
        # The upgrade: kill the owner of the drifting endpoint once it has emitted a
        # detection, while the rest of the chunk is still coming in.
        produce_unkeyed(b.bootstrap, chunks[2], rng)
        drifting_partition = next(
            r.partition
            for r in consume_all(b.bootstrap, REKEYED, idle=1.0)
            if json.loads(r.value).get("endpoint") == DRIFTING
        )
        victim = wait_for(
            lambda: next((d for d in live if drifting_partition in owned(d)), None), timeout=60
        )
        wait_for(lambda: b"driftmon_drift_detections_total{" in victim.metrics(), timeout=120)
        victim.signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
        live.remove(victim)
        live.append(start("d"))
        wait_for(lambda: settled(b.bootstrap, live), timeout=180, every=1.0)

        # A rolling restart: SIGTERM one replica at a time, mid-stream, and replace it.
        for i, daemon in enumerate(list(live)):
            produce_unkeyed(b.bootstrap, chunks[3 + i], rng)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(timeout=90) == 0, daemon.tail()
            live.remove(daemon)
            live.append(start(f"r{i}"))
        produce_unkeyed(b.bootstrap, chunks[6], rng)
        wait_for(lambda: settled(b.bootstrap, live), timeout=180, every=1.0)

        rekeyed = consume_all(b.bootstrap, REKEYED, idle=1.0)
        expected = reference(rekeyed, tmp_path)
        drifts = {(d.endpoint, d.model, d.feature) for d in expected.detections}
        assert drifts and {d[0] for d in drifts} == {DRIFTING}  # the others are unchanged
        # In the reference, every drift fires once and resolves once (no re-fire after).
        resolved_at = {
            (r.endpoint, r.model, r.feature): r.event_index for r in expected.resolutions
        }
        assert set(resolved_at) == drifts and len(expected.resolutions) == len(drifts)
        assert all(d.event_index < resolved_at[(d.endpoint, d.model, d.feature)]
                   for d in expected.detections)  # fmt: skip

        wait_for(lambda: set(webhook.count("resolved")) >= drifts, timeout=120, every=1.0)
        emitted = [
            json.loads(r.value)["detection_id"]
            for r in consume_all(b.bootstrap, "driftmon.detections")
        ]
        # Stopped, the replicas commit what they processed: the group's lag is 0 in Kafka.
        for daemon in live:
            daemon.signal(signal.SIGTERM)
        for daemon in live:
            assert daemon.wait(timeout=90) == 0, daemon.tail()
        assert lag(b.bootstrap, GROUP, REKEYED) == 0
        assert lag(b.bootstrap, f"{GROUP}-repartition", TOPIC) == 0

    twice = {i: n for i, n in Counter(emitted).items() if n > 1}
    assert not twice, f"ids emitted twice: {twice}"
    assert set(emitted) == {d.detection_id for d in expected.detections}
    assert webhook.count("firing") == Counter(dict.fromkeys(drifts, 1)), webhook.notified
    assert webhook.count("resolved") == Counter(dict.fromkeys(drifts, 1)), webhook.notified
    # Every record of the input reached the re-keyed topic (re-sent polls aside).
    ids = Counter(json.loads(r.value)["id"] for r in rekeyed)
    assert set(ids) == {json.loads(x)["id"] for x in lines}
    assert len(started) == 7
