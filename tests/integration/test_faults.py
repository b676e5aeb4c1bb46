"""Faults operators meet, on the real broker with the daemon as a subprocess: a broker whose
data is reset, a broker gone during offset commits, a signal during bootstrap, a state
directory that stops being writable."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import TopicAlreadyExistsError

from driftmon.demo.synthetic import generate
from driftmon.demo.tansu import EmbeddedBroker, free_port
from tests.support import (
    DaemonProcess,
    create_topic,
    daemon_settings,
    http_get,
    metric,
    produce,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

TOPIC = "llm-outputs"
ENDPOINTS = {"sql-assistant": {"format": "json"}}


def lines(n: int, seed: int) -> list[str]:
    return list(generate(n, n_keys=4, seed=seed))


def settings_for(bootstrap: str, tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    return daemon_settings(
        bootstrap, TOPIC, tmp_path / "state", "driftmon-faults", ENDPOINTS, **sections
    )


def counted(daemon: DaemonProcess) -> float:
    """Accepted plus rejected, from the process-wide counters (they survive a reset)."""
    body = daemon.metrics()
    total = metric(body, "driftmon_events_accepted_total") or 0.0
    for line in body.decode().splitlines():
        if line.startswith("driftmon_events_rejected_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def resets(daemon: DaemonProcess) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in daemon.metrics().decode().splitlines()
        if line.startswith("driftmon_offset_resets_total{")
    )


def log_records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Every line of the daemon's log, parsed: a line that is not JSON fails the test."""
    return [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]


def restart_empty(broker: EmbeddedBroker, tmp_path: Path) -> EmbeddedBroker:
    """The same address, no data: a rebuilt cluster. The topic is created again (the
    daemon's metadata requests may have auto-created it first)."""
    broker.stop()
    fresh = EmbeddedBroker(port=broker.port, log_file=tmp_path / "broker-2.log").start()
    with contextlib.suppress(TopicAlreadyExistsError):
        create_topic(fresh.bootstrap, TOPIC)
    return fresh


def test_a_reset_broker_is_detected_counted_and_nothing_after_it_is_lost(broker, tmp_path):
    before = lines(2000, seed=5)
    produce(broker.bootstrap, TOPIC, before)
    cfg = settings_for(broker.bootstrap, tmp_path, state={"checkpoint_every_events": 500})
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()
        wait_for(lambda: counted(daemon) >= len(before), timeout=60, every=0.2)
        wait_for(lambda: '"partitions": {"llm-outputs-0": 2000}' in daemon.log.read_text())
        fresh = restart_empty(broker, tmp_path)
        try:
            # Fewer records than the checkpoint's offset: without the check the daemon
            # would wait at offset 2000 and read none of them.
            after = lines(1500, seed=6)
            produce(fresh.bootstrap, TOPIC, after)
            wait_for(lambda: resets(daemon) >= 1, timeout=90, every=0.5)
            wait_for(lambda: counted(daemon) >= len(before) + len(after), timeout=90, every=0.5)
            time.sleep(2.0)
            assert counted(daemon) == len(before) + len(after)  # each new record once
            warnings = [
                r
                for r in log_records(daemon)
                if r["event"].startswith("offset outside the partition's log")
            ]
            assert warnings and warnings[0]["offset"] == 2000, daemon.tail()
            assert warnings[0]["reason"] in ("beyond_end", "topic_recreated")
            assert warnings[0]["auto_offset_reset"] == "earliest"
            daemon.wait_ready(timeout=30)
        finally:
            fresh.stop()


def test_a_broker_gone_during_commits_is_retried_and_the_daemon_catches_up(broker, tmp_path):
    first = lines(20_000, seed=7)
    produce(broker.bootstrap, TOPIC, first)
    cfg = settings_for(
        broker.bootstrap,
        tmp_path,
        kafka={"max_poll_records": 50},
        state={"checkpoint_every_events": 50},  # a blocking commit every batch
    )
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()
        wait_for(lambda: counted(daemon) >= 1000, timeout=60, every=0.05)
        broker.stop()

        def retried() -> bool:
            body = daemon.metrics()
            return (metric(body, "driftmon_kafka_retries_total", operation="commit") or 0) >= 1

        wait_for(retried, timeout=60, every=0.5)
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.tail()
        fresh = restart_empty(broker, tmp_path)
        try:
            seen = counted(daemon)
            later = lines(500, seed=8)
            produce(fresh.bootstrap, TOPIC, later)
            wait_for(lambda: counted(daemon) >= seen + len(later), timeout=120, every=0.5)
            assert daemon.proc.poll() is None, daemon.tail()
        finally:
            fresh.stop()
    retries = [r for r in log_records(daemon) if r["event"] == "kafka operation failed, retrying"]
    assert {r["operation"] for r in retries} >= {"commit"}
    # kafka-python's connection errors, once per template per 30 s, not ~8 lines/s.
    library = [r for r in log_records(daemon) if r.get("logger", "").startswith("kafka")]
    templates = {(r["logger"], r["event"].split(":")[0]) for r in library}
    assert len(library) <= 3 * len(templates) + 10, library


def test_sigterm_during_bootstrap_with_no_broker_exits_0(tmp_path):
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    daemon = DaemonProcess(tmp_path, settings_for(nowhere, tmp_path))
    with running(daemon):
        wait_for(lambda: http_get(f"{daemon.url}/healthz")[0] == 200, timeout=30, every=0.2)
        time.sleep(1.0)  # inside kafka-python's bootstrap by now
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, daemon.tail()
    records = log_records(daemon)
    assert records[-1]["event"] == "stopped" and records[-1]["exit_code"] == 0
    assert not [r for r in records if r["level"] == "error" and "logger" not in r]


def test_a_state_dir_that_becomes_unwritable_stops_with_one_json_error(broker, tmp_path):
    first, later = lines(1000, seed=9), lines(1000, seed=10)
    produce(broker.bootstrap, TOPIC, first)
    cfg = settings_for(broker.bootstrap, tmp_path, state={"checkpoint_every_events": 200})
    daemon = DaemonProcess(tmp_path, cfg)
    with running(daemon):
        daemon.wait_ready()
        wait_for(lambda: counted(daemon) >= len(first), timeout=60, every=0.2)
        # A file where the directory was: writes fail even for root (a chmod would not).
        state = tmp_path / "state"
        for path in state.iterdir():
            path.unlink()
        state.rmdir()
        state.write_text("not a directory any more")
        produce(broker.bootstrap, TOPIC, later)
        assert daemon.wait(timeout=60) == 1, daemon.tail()
    records = log_records(daemon)  # every line JSON: no raw traceback
    errors = [r for r in records if r["level"] == "error" and "logger" not in r]
    assert len(errors) == 1, errors
    assert errors[0]["event"] == "stopping: state.dir unusable"
    assert str(state) in errors[0]["error"] and "exception" not in errors[0]
    assert not [r for r in records if r["event"] == "shutdown step failed"], records
    assert records[-1]["event"] == "stopped" and records[-1]["exit_code"] == 1


def test_a_directory_in_place_of_a_checkpoint_stops_with_a_clear_message(broker, tmp_path):
    blocker = tmp_path / "state" / f"{TOPIC}-0.dmck"
    blocker.mkdir(parents=True)
    daemon = DaemonProcess(tmp_path, settings_for(broker.bootstrap, tmp_path))
    with running(daemon):
        assert daemon.wait(timeout=60) == 1, daemon.tail()
    records = log_records(daemon)
    errors = [r for r in records if r["level"] == "error" and "logger" not in r]
    assert [e["event"] for e in errors] == ["stopping: state.dir unusable"]
    assert f"{blocker} cannot be read" in errors[0]["error"]
    assert records[-1]["event"] == "stopped" and records[-1]["exit_code"] == 1
