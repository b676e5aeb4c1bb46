"""Version transitions end to end: the daemon as a real process, a real Kafka-protocol
broker (tansu) and a real Alertmanager. An endpoint switches its model label mid-stream;
the record on the transitions topic, the metric, GET /transitions and the alert agree."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from driftmon.demo.tansu import EmbeddedBroker
from tests.core.test_transitions import answer, event
from tests.support import (
    Alertmanager,
    DaemonProcess,
    consume_all,
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
TRANSITIONS = "driftmon.transitions"
OLD, NEW = "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"
KEY = {"endpoint": "chat", "from_model": OLD, "to_model": NEW}


def old_version(n: int = 600, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [event(OLD, answer(rng, rng.randint(30, 60))) for _ in range(n)]


def new_version(n: int = 300, seed: int = 2) -> list[str]:
    """Clearly longer answers, most of them opening with "Certainly!"."""
    rng = random.Random(seed)
    return [
        event(NEW, answer(rng, rng.randint(60, 120), "Certainly! " if rng.random() < 0.6 else ""))
        for _ in range(n)
    ]


def send(broker: EmbeddedBroker, lines: list[str]) -> None:
    # Keyed by endpoint: both versions land in one partition, in order.
    produce(
        broker.bootstrap, TOPIC, lines, key=lambda value: json.loads(value)["endpoint"].encode()
    )


def settings(broker: EmbeddedBroker, tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    return daemon_settings(
        broker.bootstrap, TOPIC, tmp_path / "state", "driftmon-test", {}, **sections
    )


def listed(daemon: DaemonProcess) -> list[dict[str, Any]]:
    status, body = http_get(f"{daemon.url}/transitions", timeout=10.0)
    assert status == 200, daemon.tail()
    return json.loads(body)["transitions"]  # type: ignore[no-any-return]


def settled(daemon: DaemonProcess, new_events: int) -> dict[str, Any] | None:
    """The one listed transition once every new-version event is folded in."""
    got = listed(daemon)
    if len(got) == 1 and got[0]["new_events"] == new_events and got[0]["verdict"] != "pending":
        return got[0]
    return None


def shown_verdict(daemon: DaemonProcess) -> str | None:
    body = daemon.metrics()
    shown = [
        v
        for v in ("pending", "unchanged", "changed", "breaking")
        if metric(body, "driftmon_transition_verdict", **KEY, verdict=v) == 1.0
    ]
    return shown[0] if len(shown) == 1 else None


def records(broker: EmbeddedBroker) -> list[tuple[bytes, dict[str, Any]]]:
    return [(r.key, json.loads(r.value)) for r in consume_all(broker.bootstrap, TRANSITIONS)]


@needs_alertmanager
def test_a_model_switch_shows_the_same_verdict_everywhere(broker, tmp_path):
    am = Alertmanager(tmp_path / "am").start()
    try:
        send(broker, old_version() + new_version())
        cfg = settings(
            broker, tmp_path, alertmanager={"urls": [am.url], "static_labels": {"team": "ml"}}
        )
        with running(DaemonProcess(tmp_path, cfg)) as daemon:
            daemon.wait_ready()
            transition = wait_for(lambda: settled(daemon, 300), timeout=60, every=0.5)
            verdict = transition["verdict"]
            assert verdict == "changed", transition  # longer answers, "Certainly!" openers
            assert {k: transition[k] for k in KEY} == KEY
            assert transition["partition"] == f"{TOPIC}/0"
            assert transition["old_events"] >= 600

            assert shown_verdict(daemon) == verdict
            effect = metric(
                daemon.metrics(), "driftmon_transition_effect", **KEY, feature="output_chars"
            )
            assert effect is not None and effect > 1.0

            def alerted() -> list[dict[str, Any]]:
                return [a for a in am.alerts() if a["labels"]["alertname"] == "LLMModelTransition"]

            (alert,) = wait_for(alerted, timeout=30, every=0.5)
            assert alert["labels"] == {
                "alertname": "LLMModelTransition",
                **KEY,
                "severity": "warning",
                "team": "ml",
            }
            assert alert["annotations"]["verdict"] == verdict
            assert alert["annotations"]["semver"] == "minor"
            assert alert["annotations"]["description"].startswith(f"{OLD} → {NEW}: changed")

            published = records(broker)
            assert published, "a record at the verdict change"
            key, last = published[-1]
            assert key == b"chat" and last["verdict"] == verdict
            assert {k: last[k] for k in KEY} == KEY
            assert last["partition"] == f"{TOPIC}/0"
            assert 600 < last["next_offset"] <= 900
    finally:
        am.stop()


def test_a_restart_between_the_versions_keeps_the_baseline(broker, tmp_path):
    cfg = settings(broker, tmp_path)
    send(broker, old_version())
    with running(DaemonProcess(tmp_path, cfg)) as first:
        first.wait_ready()
        wait_for(lambda: first.events_seen() >= 600, timeout=60, every=0.5)
        assert listed(first) == []  # one version so far: nothing to compare
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=40) == 0, first.tail()

    send(broker, new_version())
    second = DaemonProcess(tmp_path, cfg)
    with running(second):
        second.wait_ready()
        transition = wait_for(lambda: settled(second, 300), timeout=60, every=0.5)
        # Resumed after the checkpoint: the old version's events are not read again.
        wait_for(lambda: second.events_seen() >= 300, timeout=30, every=0.5)
        assert second.events_seen() == 300
        assert {k: transition[k] for k in KEY} == KEY
        assert (
            transition["mode"] == "snapshot"
        )  # the old version's baseline came from the checkpoint
        assert transition["old_events"] >= 600
        assert transition["verdict"] == "changed"
        assert shown_verdict(second) == "changed"
    assert records(broker)[-1][1]["verdict"] == "changed"
