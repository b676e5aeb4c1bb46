"""Two daemon replicas in one consumer group with ``state.backend: kafka``: one is killed
with SIGKILL after it emitted detections it never checkpointed; the other takes its
partitions over from the state topic, warm, and emits each detection id once."""

from __future__ import annotations

import json
import signal
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.support import (
    DaemonProcess,
    consume_all,
    create_topic,
    daemon_settings,
    metric,
    produce,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

TOPIC = "llm-outputs"
PARTITIONS = 4
ENDPOINTS = {"sql-assistant": {"format": "json"}}


def endpoint_key(value: bytes) -> bytes:
    return str(json.loads(value).get("endpoint")).encode()


def stream() -> list[str]:
    upgrade = Upgrade(endpoint="sql-assistant", at_event=4000)
    lines = generate(8000, n_keys=4, seed=3, upgrade=upgrade)
    return [x for x in lines if json.loads(x).get("kind") != "feedback"]


def replay_ids(lines: list[str], tmp_path: Path) -> set[str]:
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = replay([str(path)], Settings(endpoints=ENDPOINTS, embeddings={"enabled": False}))
    return {d.detection_id for d in result.detections}


def emitted_ids(bootstrap: str) -> list[str]:
    return [
        json.loads(r.value)["detection_id"] for r in consume_all(bootstrap, "driftmon.detections")
    ]


def caught_up(daemon: DaemonProcess, partitions: list[int]) -> bool:
    body = daemon.metrics()
    return all(
        metric(body, "driftmon_consumer_lag", topic=TOPIC, partition=str(p)) == 0
        for p in partitions
    )


def test_a_killed_replicas_partitions_continue_warm_on_the_other_without_duplicates(
    tmp_path: Path,
) -> None:
    lines = stream()
    first, second, third = lines[:3000], lines[3000:6000], lines[6000:]
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
        create_topic(b.bootstrap, TOPIC, partitions=PARTITIONS)
        produce(b.bootstrap, TOPIC, first, key=endpoint_key)
        daemons = []
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            cfg = daemon_settings(
                b.bootstrap,
                TOPIC,
                workdir / "state",
                "driftmon-scale",
                ENDPOINTS,
                # Checkpoints only at revoke and shutdown: the victim dies with detections
                # emitted after its last checkpoint.
                state={
                    "backend": "kafka",
                    "checkpoint_every_events": 1_000_000,
                    "checkpoint_every_seconds": 3600,
                    "chunk_bytes": 8192,
                },
            )
            daemons.append(DaemonProcess(workdir, cfg))
        a, b_ = daemons
        with ExitStack() as stack:
            stack.enter_context(running(a))
            a.wait_ready()
            wait_for(lambda: a.events_seen() >= len(first), timeout=60, every=0.3)
            stack.enter_context(running(b_))
            b_.wait_ready(timeout=90)  # A revoked everything, checkpointing to the topic
            produce(b.bootstrap, TOPIC, second, key=endpoint_key)
            records = consume_all(b.bootstrap, TOPIC)
            with_data = {r.partition for r in records}
            owned: dict[DaemonProcess, set[int]] = {}

            def split_and_caught_up() -> bool:
                for d in daemons:
                    body = d.metrics()
                    owned[d] = {
                        p
                        for p in range(PARTITIONS)
                        if metric(body, "driftmon_consumer_lag", topic=TOPIC, partition=str(p))
                        is not None
                    }
                return (
                    not owned[a] & owned[b_]
                    and owned[a] | owned[b_] >= with_data
                    and all(caught_up(d, sorted(owned[d] & with_data)) for d in daemons)
                )

            wait_for(split_and_caught_up, timeout=90, every=0.5)
            sql = next(
                r.partition
                for r in records
                if json.loads(r.value).get("endpoint") == "sql-assistant"
            )
            victim = next(d for d in daemons if sql in owned[d])
            survivor = b_ if victim is a else a
            before_kill = emitted_ids(b.bootstrap)
            assert before_kill, "the upgrade must be detected before the kill"
            victim.signal(signal.SIGKILL)
            victim.wait()
            survivor_log_start = len(survivor.log.read_text())
            produce(b.bootstrap, TOPIC, third, key=endpoint_key)

            def restored() -> list[dict[str, Any]]:
                return [
                    json.loads(line)
                    for line in survivor.log.read_text()[survivor_log_start:].splitlines()
                    if '"partition restored"' in line
                ]

            wait_for(
                lambda: {r["partition"] for r in restored()} >= owned[victim],
                timeout=60,
                every=0.5,
            )
            wait_for(lambda: caught_up(survivor, sorted(with_data)), timeout=90, every=0.5)
        taken_over = [r for r in restored() if r["partition"] in owned[victim]]
        assert taken_over and all(r["restored_offset"] is not None for r in taken_over), taken_over
        got = emitted_ids(b.bootstrap)
        twice = {i: n for i, n in Counter(got).items() if n > 1}
        assert not twice, f"ids emitted twice: {twice}"
        # Detections by id (the key's event count included) equal one uninterrupted replay.
        assert set(got) == replay_ids(lines, tmp_path)
