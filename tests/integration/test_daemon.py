"""The daemon as a real process against a real Kafka-protocol broker and Alertmanager."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from driftmon import kafka as kafka_io
from driftmon.core.events import Rejection
from driftmon.daemon import METRICS_REFRESH_SECONDS as METRICS_REFRESH
from driftmon.demo.synthetic import Upgrade, generate
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.kafka import DLQ_HEADERS
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.support import (
    Alertmanager,
    DaemonProcess,
    consume_all,
    create_topic,
    daemon_settings,
    http_get,
    metric,
    needs_alertmanager,
    produce,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

TOPIC = "llm-outputs"
ENDPOINTS = {"sql-assistant": {"format": "json"}}
N_EVENTS = 8000
UPGRADE_AT = 4000


def stream(bad_every: int = 0, n: int = N_EVENTS) -> list[str]:
    upgrade = Upgrade(endpoint="sql-assistant", at_event=UPGRADE_AT)
    return list(generate(n, n_keys=4, seed=3, upgrade=upgrade, bad_line_every=bad_every))


def settings_for(
    broker: EmbeddedBroker, tmp_path: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    return daemon_settings(
        broker.bootstrap, TOPIC, tmp_path / "state", "driftmon-test", ENDPOINTS, **sections
    )


def expected_detections(lines: list[str], tmp_path: Path) -> list[tuple[int, str, str, str]]:
    """What the core finds on the same input, replayed offline."""
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = replay([str(path)], Settings(endpoints=ENDPOINTS, embeddings={"enabled": False}))
    return sorted((d.event_index, d.endpoint, d.feature, d.detector) for d in result.detections)


def detections_topic(broker: EmbeddedBroker) -> list[tuple[int, str, str, str]]:
    """Detections the daemon produced, de-duplicated by source offset (at-least-once)."""
    seen = set()
    for rec in consume_all(broker.bootstrap, "driftmon.detections"):
        d = json.loads(rec.value)
        seen.add((d["offset"], d["endpoint"], d["feature"], d["detector"]))
    return sorted(seen)


def cpu_and_rss(pid: int) -> tuple[float, int]:
    """A process's CPU seconds (user + system) and resident bytes, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return (int(fields[11]) + int(fields[12])) / ticks, pages * os.sysconf("SC_PAGE_SIZE")


def active_drifts(body: bytes) -> set[tuple[str, str, str]]:
    """(endpoint, model, feature) of every ``driftmon_drift_active`` series at 1."""
    found = set()
    for line in body.decode().splitlines():
        if line.startswith("driftmon_drift_active{") and line.endswith(" 1.0"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found.add((labels["endpoint"], labels["model"], labels["feature"]))
    return found


def alerts_in(am: Alertmanager) -> set[tuple[str, str, str]]:
    return {
        (a["labels"]["endpoint"], a["labels"]["model"], a["labels"]["feature"]) for a in am.alerts()
    }


def caught_up(daemon: DaemonProcess) -> bool:
    return metric(daemon.metrics(), "driftmon_consumer_lag", topic=TOPIC, partition="0") == 0


def wait_consumed(daemon: DaemonProcess, n: int, timeout: float = 120.0) -> None:
    wait_for(lambda: daemon.events_seen() >= n, timeout=timeout, every=0.5)


def consume_then_sigterm(daemon: DaemonProcess, n: int) -> DaemonProcess:
    """Run the daemon until it has read ``n`` events, then stop it with SIGTERM: exit 0."""
    with running(daemon):
        daemon.wait_ready()
        wait_consumed(daemon, n)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=40) == 0, daemon.tail()
    return daemon


@needs_alertmanager
def test_shift_fires_one_alert_per_drifting_feature(broker, tmp_path):
    am = Alertmanager(tmp_path / "am").start()
    try:
        lines = stream()
        produce(broker.bootstrap, TOPIC, lines)
        cfg = settings_for(broker, tmp_path, alertmanager={"urls": [am.url]})
        with running(DaemonProcess(tmp_path, cfg)) as daemon:
            daemon.wait_ready()
            wait_consumed(daemon, len(lines))
            expected = expected_detections(lines, tmp_path)
            drifting = {(ep, f) for _, ep, f, _ in expected}
            assert drifting, "the upgrade must be detected"
            assert {ep for ep, _ in drifting} == {"sql-assistant"}

            def delivered() -> list[dict[str, Any]]:
                got = am.alerts()
                return got if len(got) >= len(drifting) else []

            alerts = wait_for(delivered, timeout=30)
            keys = [(a["labels"]["endpoint"], a["labels"]["feature"]) for a in alerts]
            assert sorted(keys) == sorted(drifting)  # exactly one alert per drifting feature
            assert all(a["labels"]["alertname"] == "LLMOutputDrift" for a in alerts)
            body = daemon.metrics()
            for ep, feature in drifting:
                assert (
                    metric(
                        body,
                        "driftmon_drift_active",
                        endpoint=ep,
                        feature=feature,
                        model="gpt-4o-mini-2024-07-18",
                    )
                    == 1.0
                )
            assert metric(body, "driftmon_alerts_sent_total", status="ok") >= len(drifting)
            assert detections_topic(broker) == expected
    finally:
        am.stop()


def test_bad_messages_go_to_the_dead_letter_topic_and_are_counted(broker, tmp_path):
    lines = stream(bad_every=50, n=2000)
    produce(broker.bootstrap, TOPIC, lines)
    produce(broker.bootstrap, TOPIC, [b"\xff\xfe not utf-8", b"x" * 200_000])
    # Larger than the daemon's producer may send (1 MiB): it must be truncated, not crash.
    big = KafkaProducer(bootstrap_servers=[broker.bootstrap], max_request_size=4_000_000)
    big.send(TOPIC, value=b"y" * 1_500_000).get(timeout=30)
    big.close()
    cfg = settings_for(
        broker, tmp_path, kafka={"max_message_bytes": 100_000}, metrics={"max_detail_keys": 1}
    )
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()
        wait_consumed(daemon, len(lines) + 3)
        body = daemon.metrics()

        # Per-feature gauges only for the most recent key (none drifts in 2000 events);
        # every key keeps its event counter.
        def detail_endpoints() -> set[str]:
            return {
                line.split('endpoint="', 1)[1].split('"', 1)[0]
                for line in daemon.metrics().decode().splitlines()
                if line.startswith("driftmon_feature_value{")
            }

        wait_for(lambda: len(detail_endpoints()) == 1, timeout=20, every=0.5)
        assert len(_key_counts(daemon)) == 4
    dead = consume_all(broker.bootstrap, "driftmon.dead-letter")
    assert len(dead) == 2000 // 50 + 3
    reasons: dict[str, int] = {}
    for rec in dead:
        headers = dict(rec.headers)
        assert set(DLQ_HEADERS) <= set(headers)
        assert headers["driftmon-source-topic"] == TOPIC.encode()
        reasons[headers["driftmon-reason"].decode()] = (
            reasons.get(headers["driftmon-reason"].decode(), 0) + 1
        )
        offset = int(headers["driftmon-source-offset"])
        original = lines[offset].encode() if offset < len(lines) else None
        if original is not None:
            assert rec.value == original  # produced unchanged
        elif headers["driftmon-reason"] == b"too_large":  # cut to max_message_bytes
            assert headers["driftmon-truncated-from"] in (b"200000", b"1500000")
            assert len(rec.value) == 100_000 and rec.value[:1] in (b"x", b"y")
    assert reasons["too_large"] == 2
    # A rejection about one field names it in a header (missing_field, bad_type, …).
    fields = {
        dict(rec.headers)["driftmon-reason"]: dict(rec.headers).get("driftmon-field")
        for rec in dead
    }
    assert fields[b"not_json"] is None
    assert fields[b"missing_field"] in (b"endpoint", b"model", b"output")
    for reason, count in reasons.items():
        assert metric(body, "driftmon_events_rejected_total", reason=reason) == count


def test_dead_letters_kafka_refuses_are_adapted_or_reported_never_raised(broker):
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    errors: list[BaseException] = []
    common = {
        "rejection": Rejection("not_json", "empty record"),
        "source_topic": TOPIC,
        "partition": 0,
        "on_error": errors.append,
    }
    # Neither key nor value (a tombstone from another client): Kafka refuses to produce it.
    kafka_io.send_dead_letter(
        producer, "dlq-test", value=None, key=None, offset=7, max_value_bytes=10**6, **common
    )
    # Too big for this producer and not cut (a limit above the producer's): reported.
    kafka_io.send_dead_letter(
        producer,
        "dlq-test",
        value=b"z" * 2_000_000,
        key=None,
        offset=8,
        max_value_bytes=10**7,
        **common,
    )
    producer.flush()
    producer.close()
    assert len(errors) == 1 and "MessageSizeTooLarge" in type(errors[0]).__name__
    (rec,) = consume_all(broker.bootstrap, "dlq-test")
    headers = dict(rec.headers)
    assert rec.value == b"" and headers["driftmon-null-value"] == b"true"
    assert headers["driftmon-source-offset"] == b"7"


def test_sigterm_is_clean_and_resumes_without_loss(broker, tmp_path):
    lines = stream()
    cfg = settings_for(broker, tmp_path)
    produce(broker.bootstrap, TOPIC, lines[:5000])
    first = consume_then_sigterm(DaemonProcess(tmp_path, cfg), 5000)
    assert "checkpoint" in first.log.read_text()
    produce(broker.bootstrap, TOPIC, lines[5000:])
    second = DaemonProcess(tmp_path, cfg)
    with running(second):
        second.wait_ready()
        # The second run sees only the records after the first run's checkpoint.
        wait_consumed(second, len(lines) - 5000)
        time.sleep(1.0)
        assert second.events_seen() == len(lines) - 5000
    assert detections_topic(broker) == expected_detections(lines, tmp_path)


@needs_alertmanager
def test_a_drift_firing_at_shutdown_is_resolved_by_the_next_run(broker, tmp_path):
    # The drift state is in the checkpoint: the restarted daemon keeps the alert firing
    # and resolves it once the feature is quiet. Its endsAt is 20 minutes ahead, so an
    # alert the new run forgot would still be active at the end of this test.
    am = Alertmanager(tmp_path / "am").start()
    try:
        lines = stream(n=12_000)
        produce(broker.bootstrap, TOPIC, lines[:5000])
        alerting = {
            "urls": [am.url],
            "resend_interval_seconds": 300,
            "min_active_seconds": 0,
            "resolve_after_quiet_events": 200,
        }
        cfg = settings_for(broker, tmp_path, alertmanager=alerting)
        with running(DaemonProcess(tmp_path, cfg)) as first:
            first.wait_ready()
            wait_consumed(first, 5000)
            fired = active_drifts(first.metrics())
            wait_for(lambda: alerts_in(am) == fired, timeout=30)
            first.signal(signal.SIGTERM)
            assert first.wait(timeout=40) == 0, first.tail()
        assert fired
        assert alerts_in(am) == fired  # still firing
        earlier_log = len(first.log.read_text())

        produce(broker.bootstrap, TOPIC, lines[5000:])
        with running(DaemonProcess(tmp_path, cfg)) as second:
            second.wait_ready()
            restored = [
                json.loads(line)
                for line in second.log.read_text()[earlier_log:].splitlines()
                if '"partition assigned"' in line
            ]
            assert [entry["active_drifts"] for entry in restored] == [len(fired)]
            assert active_drifts(second.metrics()) >= fired  # firing again from the start
            wait_for(lambda: caught_up(second), timeout=120, every=0.5)
            # (A drift detected later in this run, on feedback, may still be firing.)
            wait_for(lambda: not fired & alerts_in(am), timeout=60, every=1.0)
            assert not fired & active_drifts(second.metrics())
    finally:
        am.stop()


@needs_alertmanager
def test_a_key_in_two_partitions_keeps_its_alert_until_both_are_quiet(tmp_path):
    # Unkeyed producers spread a key over partitions; one daemon then watches it with one
    # monitor per partition, but its alerts and drift series are shared: one partition
    # going quiet must not resolve a drift the other still sees.
    no_feedback = [x for x in stream(n=12_000) if json.loads(x).get("kind") != "feedback"]
    long_run, short_run = no_feedback, no_feedback[: len(no_feedback) * 5 // 12]
    # Offline, with the same settings: partition 0's drifts all go quiet by its end,
    # partition 1's are detected shortly before its end and stay active.
    still_active = {(ep, f) for _, ep, f, _ in expected_detections(short_run, tmp_path)}
    assert still_active
    am = Alertmanager(tmp_path / "am").start()
    try:
        with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
            create_topic(b.bootstrap, TOPIC, partitions=2)
            produce(b.bootstrap, TOPIC, long_run, partition=0)
            produce(b.bootstrap, TOPIC, short_run, partition=1)
            alerting = {
                "urls": [am.url],
                "resend_interval_seconds": 300,
                "min_active_seconds": 0,
                "resolve_after_quiet_events": 200,
            }
            with running(
                DaemonProcess(tmp_path, settings_for(b, tmp_path, alertmanager=alerting))
            ) as daemon:
                daemon.wait_ready()
                wait_consumed(daemon, len(long_run) + len(short_run), timeout=180)
                time.sleep(METRICS_REFRESH + 1)  # a refresh after the last event resolves
                firing = {(ep, f) for ep, _, f in alerts_in(am)}
                assert firing == still_active
                assert {(ep, f) for ep, _, f in active_drifts(daemon.metrics())} == still_active
    finally:
        am.stop()


def test_a_checkpoint_of_other_detector_settings_starts_fresh_without_loss(broker, tmp_path):
    # An operator changes the false-alarm budget (or upgrades driftmon to another state
    # version): the old checkpoint cannot be restored into the new detectors. The daemon
    # says so, learns afresh from the committed offset, and loses no record.
    lines = stream(n=6000)
    produce(broker.bootstrap, TOPIC, lines[:3000])
    first = consume_then_sigterm(DaemonProcess(tmp_path, settings_for(broker, tmp_path)), 3000)
    produce(broker.bootstrap, TOPIC, lines[3000:])
    earlier_log = len(first.log.read_text())
    changed = settings_for(broker, tmp_path, detectors={"events_per_false_alarm": 250_000})
    second = DaemonProcess(tmp_path, changed)
    with running(second):
        second.wait_ready()
        wait_consumed(second, len(lines) - 3000)
        time.sleep(1.0)
        assert second.events_seen() == len(lines) - 3000
        wait_for(lambda: caught_up(second), timeout=30, every=0.5)  # gauges: every 5 s
    log = second.log.read_text()[earlier_log:]
    assert "checkpoint not usable, starting fresh" in log
    assert "other detector settings" in log


def test_kill_9_at_a_random_point_gives_the_same_detections(broker, tmp_path):
    lines = stream()
    produce(broker.bootstrap, TOPIC, lines)
    cfg = settings_for(broker, tmp_path, state={"checkpoint_every_events": 700})
    kill_at = random.Random().randint(1500, 6500)
    first = DaemonProcess(tmp_path, cfg)
    with running(first):
        first.wait_ready()
        wait_for(lambda: first.events_seen() >= kill_at, timeout=120, every=0.05)
        first.signal(signal.SIGKILL)
        first.wait()
    with running(DaemonProcess(tmp_path, cfg)) as second:
        second.wait_ready()
        # It resumes from its last checkpoint, before the kill point, and reads to the end.
        wait_for(lambda: caught_up(second), timeout=120, every=0.5)
    got = detections_topic(broker)
    assert got == expected_detections(lines, tmp_path), f"killed at {kill_at}"


def test_broker_freeze_is_survived(broker, tmp_path):
    lines = stream(n=6000)
    produce(broker.bootstrap, TOPIC, lines[:3000])
    with running(DaemonProcess(tmp_path, settings_for(broker, tmp_path))) as daemon:
        daemon.wait_ready()
        wait_consumed(daemon, 3000)
        assert daemon.proc is not None
        cpu_before, rss_before = cpu_and_rss(daemon.proc.pid)
        broker.pause()
        try:
            time.sleep(30)
            assert daemon.proc.poll() is None, daemon.tail()
            assert http_get(f"{daemon.url}/healthz")[0] == 200
            # It waits rather than spins: kafka-python's poll alone spun a whole core and
            # grew ~10 MB/s here (driftmon.kafka.POLL_WAIT_FLOOR); with the floor, ~1 s of
            # CPU and no growth in these 30 s.
            cpu_after, rss_after = cpu_and_rss(daemon.proc.pid)
            assert cpu_after - cpu_before < 10.0, (cpu_before, cpu_after)
            assert rss_after - rss_before < 100 * 2**20, (rss_before, rss_after)
        finally:
            broker.resume()
        produce(broker.bootstrap, TOPIC, lines[3000:])
        wait_consumed(daemon, len(lines), timeout=180)
        assert daemon.proc.poll() is None


@needs_alertmanager
def test_alertmanager_down_during_detection_gets_the_alert_later(broker, tmp_path):
    am = Alertmanager(tmp_path / "am")  # port reserved, not started yet
    lines = stream()
    produce(broker.bootstrap, TOPIC, lines)
    cfg = settings_for(
        broker, tmp_path, alertmanager={"urls": [am.url], "resend_interval_seconds": 3}
    )
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()
        wait_consumed(daemon, len(lines))
        body = daemon.metrics()
        assert (metric(body, "driftmon_alerts_sent_total", status="ok") or 0) == 0
        assert any(
            line.startswith("driftmon_drift_active{") and line.endswith(" 1.0")
            for line in body.decode().splitlines()
        )
        am.start()
        try:
            alerts = wait_for(am.alerts, timeout=60)
            assert {a["labels"]["endpoint"] for a in alerts} == {"sql-assistant"}
        finally:
            am.stop()


def _endpoint_key(value: bytes) -> bytes:
    return str(json.loads(value).get("endpoint")).encode()


def _key_counts(daemon: DaemonProcess) -> dict[str, float]:
    counts = {}
    for line in daemon.metrics().decode().splitlines():
        if line.startswith("driftmon_events_total{"):
            labels, value = line.rsplit(" ", 1)
            endpoint = labels.split('endpoint="', 1)[1].split('"', 1)[0]
            counts[endpoint] = counts.get(endpoint, 0.0) + float(value)
    return counts


def test_rebalance_between_two_daemons_moves_partitions_and_their_series(tmp_path):
    # Keyed by endpoint, so each endpoint lives in one of the two partitions.
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
        create_topic(b.bootstrap, TOPIC, partitions=2)
        lines = [x for x in stream(n=6000) if json.loads(x).get("kind") != "feedback"]
        first, later = lines[:3000], lines[3000:]
        produce(b.bootstrap, TOPIC, first, key=_endpoint_key)
        a_dir, b_dir = tmp_path / "a", tmp_path / "b"
        a_dir.mkdir()
        b_dir.mkdir()
        cfg_a = settings_for(b, a_dir)
        with running(DaemonProcess(a_dir, cfg_a)) as a:
            a.wait_ready()
            wait_consumed(a, len(first))
            assert len(_key_counts(a)) == 4
            with running(DaemonProcess(b_dir, settings_for(b, b_dir))) as second:
                second.wait_ready(timeout=90)
                # After the rebalance each daemon owns one partition: A dropped the series
                # of the keys it gave away.
                wait_for(lambda: len(_key_counts(a)) < 4, timeout=60, every=0.5)
                produce(b.bootstrap, TOPIC, later, key=_endpoint_key)
                expected = {}
                for x in later:
                    ep = json.loads(x)["endpoint"]
                    expected[ep] = expected.get(ep, 0) + 1

                def split_done() -> bool:
                    got_a, got_b = _key_counts(a), _key_counts(second)
                    keys = set(got_a) | set(got_b)
                    return keys == set(expected) and all(
                        got_a.get(ep, 0) + got_b.get(ep, 0) >= n for ep, n in expected.items()
                    )

                wait_for(split_done, timeout=90, every=0.5)
                got_a, got_b = _key_counts(a), _key_counts(second)
                assert not set(got_a) & set(got_b), (got_a, got_b)
                # A kept its partition's keys and saw each new event of them once; B may
                # re-read the tail before the revoke-time commit (at-least-once).
                for ep, n in got_a.items():
                    assert n == expected[ep]
                for ep, n in got_b.items():
                    assert n >= expected[ep]
