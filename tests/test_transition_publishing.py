"""The daemon's side of version transitions (driftmon.sinks.transitions): records on the
transitions topic, the metrics, the LLMModelTransition alert (posted to a real local HTTP
receiver) and the /transitions JSON, driven by real pipelines."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from driftmon.alertmanager import AlertSender
from driftmon.config import pipeline_config
from driftmon.core.pipeline import Pipeline
from driftmon.metrics import Metrics
from driftmon.partitions import PartitionState
from driftmon.server import serve
from driftmon.settings import Settings
from driftmon.sinks.transitions import TransitionPublisher
from tests.core.test_transitions import answer, event
from tests.support import http_get
from tests.test_sinks import Receiver

TP = TopicPartition("llm-outputs", 0)
KEY = {"endpoint": "chat", "from_model": "gpt-4o-2024-08-06", "to_model": "gpt-4o-2024-11-20"}


class FakeFuture:
    def add_errback(self, callback: Any) -> None:
        pass


class RecordingProducer:
    """Keeps what is sent; ``fail`` makes send raise as kafka-python does when full."""

    def __init__(self, fail: bool = False) -> None:
        self.records: list[tuple[str, bytes, dict[str, Any]]] = []
        self.fail = fail

    def send(self, topic: str, *, value: bytes, key: bytes, headers: Any) -> FakeFuture:
        if self.fail:
            raise KafkaTimeoutError("buffer full")
        self.records.append((topic, key, json.loads(value)))
        return FakeFuture()


class Rig:
    """One partition's pipeline, fed in batches, published as the daemon's loop does."""

    def __init__(self, settings: Settings, alert_url: str | None = None, **producer: Any) -> None:
        if alert_url is not None:
            settings = settings.model_copy(
                update={
                    "alertmanager": settings.alertmanager.model_copy(
                        update={"urls": [alert_url], "static_labels": {"team": "ml"}}
                    )
                }
            )
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.alerts = AlertSender(settings.alertmanager, self.metrics)
        self.producer = RecordingProducer(**producer)
        self.now = 1e9
        self.publisher = TransitionPublisher(
            settings, self.metrics, self.alerts, lambda: self.producer, clock=lambda: self.now
        )
        self.partitions = {TP: self.new_state()}
        self.offset = 0

    def new_state(self) -> PartitionState:
        return PartitionState(Pipeline(pipeline_config(self.settings)))

    def feed(self, lines: list[str], batch: int = 100) -> None:
        for i in range(0, len(lines), batch):
            self.publisher.before_batch(self.partitions)
            state = self.partitions[TP]
            for line in lines[i : i + batch]:
                outcome = state.pipeline.process(line, self.offset)
                assert outcome.rejection is None
                self.offset += 1
                state.next_offset = self.offset
            self.publisher.publish(self.partitions)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def verdict(self) -> str | None:
        """The one verdict whose series is 1 (None: no series)."""
        shown = [
            v
            for v in ("pending", "unchanged", "changed", "breaking")
            if self.value("driftmon_transition_verdict", **KEY, verdict=v) == 1
        ]
        assert len(shown) <= 1
        return shown[0] if shown else None

    def listed(self) -> list[dict[str, Any]]:
        body = json.loads(self.publisher.response().body)
        return body["transitions"]  # type: ignore[no-any-return]


def upgrade(seed: int = 1, old: int = 600, new: int = 300) -> list[str]:
    """The issue's new-user case: a snapshot bump with longer answers, "Certainly!"."""
    rng = random.Random(seed)
    lines = [event(KEY["from_model"], answer(rng, rng.randint(30, 60))) for _ in range(old)]
    lines += [
        event(
            KEY["to_model"],
            answer(rng, rng.randint(60, 120), "Certainly! " if rng.random() < 0.6 else ""),
        )
        for _ in range(new)
    ]
    return lines


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_a_verdict_is_published_everywhere_with_the_same_verdict(receiver: Receiver) -> None:
    rig = Rig(Settings(), alert_url=receiver.url)
    rig.feed(upgrade())
    rig.publisher.refresh(rig.partitions)

    records = rig.producer.records
    assert records, "a record at the verdict"
    topic, key, record = records[-1]
    assert (topic, key) == ("driftmon.transitions", b"chat")
    assert record["verdict"] == "changed" and record["semver"] == "minor"
    assert record["partition"] == "llm-outputs/0"
    assert 600 < record["next_offset"] <= 900
    assert {k: record[k] for k in KEY} == KEY
    # One record per change, not one per batch.
    assert len(records) == len({(r["verdict"], r["mode"], r["confounded"]) for *_, r in records})

    assert rig.verdict() == "changed"
    effect = rig.value("driftmon_transition_effect", **KEY, feature="output_chars")
    assert effect is not None and effect > 1.0  # Cohen's d: answers about twice as long
    assert rig.value("driftmon_transitions_opened_total") == 1

    (listed,) = rig.listed()
    assert listed["verdict"] == "changed" and listed["partition"] == "llm-outputs/0"
    assert listed["new_events"] == 300
    tracker = rig.partitions[TP].pipeline.transitions
    assert tracker is not None
    (t,) = tracker.transitions()
    assert listed["features"] == t.report()["features"]  # refreshed: every event folded in

    alert = receiver.wait(1)[-1][-1]
    assert alert["labels"] == {
        "team": "ml",
        "alertname": "LLMModelTransition",
        **KEY,
        "severity": "warning",
    }
    assert alert["annotations"]["verdict"] == "changed"
    assert alert["annotations"]["semver"] == "minor"
    assert alert["annotations"]["description"].startswith(
        "gpt-4o-2024-08-06 → gpt-4o-2024-11-20: changed (minor) after "
    )
    rig.alerts.close(5)


def test_a_severity_change_ends_the_old_alert_and_a_withdrawn_verdict_resolves() -> None:
    rig = Rig(Settings())
    rig.feed(upgrade())
    tracker = rig.partitions[TP].pipeline.transitions
    assert tracker is not None
    (t,) = tracker.transitions()
    warning = ("LLMModelTransition", *KEY.values(), "warning")
    assert rig.alerts.active() == {warning}

    t.verdict = "breaking"  # as a guard would break it
    tracker._dirty[t.number] = t
    rig.publisher.publish(rig.partitions)
    assert rig.alerts.active() == {("LLMModelTransition", *KEY.values(), "critical")}
    assert rig.verdict() == "breaking"

    t.verdict, t.confounded = "pending", True  # the inputs differ after all
    tracker._dirty[t.number] = t
    rig.publisher.publish(rig.partitions)
    assert rig.alerts.active() == set()
    assert rig.verdict() == "pending"
    assert rig.producer.records[-1][2]["confounded"] is True


def test_a_verdict_alert_resolves_after_alert_hours_and_a_new_verdict_fires_again() -> None:
    rig = Rig(Settings(transitions={"alert_hours": 2}))
    rig.feed(upgrade())
    tracker = rig.partitions[TP].pipeline.transitions
    assert tracker is not None
    (t,) = tracker.transitions()
    warning = ("LLMModelTransition", *KEY.values(), "warning")
    assert rig.alerts.active() == {warning}
    rig.now += 3600
    rig.publisher.refresh(rig.partitions)
    assert rig.alerts.active() == {warning}
    rig.now += 3601
    rig.publisher.refresh(rig.partitions)
    assert rig.alerts.active() == set()  # told for two hours: the metric keeps the verdict
    rig.publisher.refresh(rig.partitions)
    assert rig.alerts.active() == set()
    t.verdict = "breaking"
    tracker._dirty[t.number] = t
    rig.publisher.publish(rig.partitions)
    assert rig.alerts.active() == {("LLMModelTransition", *KEY.values(), "critical")}


def test_a_restored_tracker_fires_again_and_is_not_counted_or_produced_again() -> None:
    rig = Rig(Settings())
    rig.feed(upgrade())
    saved = rig.partitions[TP].pipeline.monitor.snapshot()
    produced = len(rig.producer.records)

    restarted = Rig(Settings())
    restarted.partitions[TP].pipeline.monitor.restore(saved)
    restarted.partitions[TP].next_offset = 900
    restarted.publisher.before_batch(restarted.partitions)  # the loop, right after assignment
    restarted.publisher.publish(restarted.partitions)

    assert restarted.verdict() == "changed"
    assert restarted.alerts.active() == {("LLMModelTransition", *KEY.values(), "warning")}
    assert restarted.value("driftmon_transitions_opened_total") == 0
    assert restarted.producer.records == []  # published before the checkpoint was written
    assert [t["verdict"] for t in restarted.listed()] == ["changed"]
    assert produced >= 1


def test_a_partition_that_leaves_takes_its_series_and_forgets_its_alert(
    receiver: Receiver,
) -> None:
    rig = Rig(Settings(), alert_url=receiver.url)
    rig.feed(upgrade())
    assert rig.verdict() == "changed"
    posted = len(receiver.wait(1))

    del rig.partitions[TP]  # revoked or lost
    rig.publisher.publish(rig.partitions)
    assert rig.verdict() is None
    assert rig.value("driftmon_transition_effect", **KEY, feature="output_chars") is None
    assert rig.alerts.active() == set()
    assert rig.listed() == []
    rig.alerts.close(5)
    # Forgotten, not resolved: the new owner fires it again or it expires.
    assert len(receiver.bodies) == posted


def test_a_partition_reset_counts_its_new_tracker_from_zero() -> None:
    rig = Rig(Settings())
    rig.feed(upgrade())
    assert rig.value("driftmon_transitions_opened_total") == 1
    rig.partitions[TP] = rig.new_state()  # reset within a batch: a fresh tracker
    rig.offset = 0
    rig.feed(upgrade(seed=2))
    assert rig.value("driftmon_transitions_opened_total") == 2
    assert len(rig.listed()) == 1


def test_a_transition_no_longer_listed_is_resolved_and_removed() -> None:
    rig = Rig(Settings(transitions={"max_events": 100}))
    rig.feed(upgrade())
    tracker = rig.partitions[TP].pipeline.transitions
    assert tracker is not None
    (t,) = tracker.transitions()
    assert t.closed and rig.verdict() == "changed"
    assert rig.alerts.active()

    tracker.adopt_config(dataclasses.replace(tracker.config, keep_closed=0))
    rig.publisher.refresh(rig.partitions)
    assert tracker.transitions() == []
    assert rig.verdict() is None
    assert rig.alerts.active() == set()
    assert rig.listed() == []


def test_refused_transitions_are_counted_by_reason() -> None:
    rig = Rig(Settings(limits={"max_transitions": 0}))
    rig.feed(upgrade())
    assert rig.value("driftmon_transitions_refused_total", reason="limit") == 1
    assert rig.value("driftmon_transitions_refused_total", reason="no_baseline") == 0
    assert rig.listed() == [] and rig.producer.records == []


def test_a_failing_producer_is_counted_and_an_empty_topic_sends_nothing() -> None:
    failing = Rig(Settings(), fail=True)
    failing.feed(upgrade())
    assert failing.value("driftmon_produce_failed_total", topic="driftmon.transitions") == 1
    assert failing.verdict() == "changed"  # everything else still shown

    off = Rig(Settings(kafka={"transitions_topic": ""}))
    off.feed(upgrade())
    assert off.producer.records == [] and off.verdict() == "changed"


def test_transitions_disabled_publish_nothing() -> None:
    rig = Rig(Settings(transitions={"enabled": False}))
    rig.feed(upgrade())
    assert rig.verdict() is None and rig.listed() == [] and rig.producer.records == []


def test_the_list_is_served_on_the_metrics_port() -> None:
    from driftmon.server import Route

    rig = Rig(Settings())
    server, _ = serve(
        rig.registry,
        "127.0.0.1",
        0,
        ready=lambda: True,
        routes={"/transitions": Route(rig.publisher.response)},
    )
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/transitions"
        assert http_get(url) == (200, b'{"transitions": []}')
        rig.feed(upgrade())
        status, body = http_get(url)
        assert status == 200
        assert [t["verdict"] for t in json.loads(body)["transitions"]] == ["changed"]
    finally:
        server.shutdown()
        server.server_close()


def test_the_alert_has_a_runbook_section() -> None:
    from pathlib import Path

    runbooks = (Path(__file__).parents[1] / "docs" / "runbooks.md").read_text()
    section = runbooks.split("\n## LLMModelTransition\n", 1)[1].split("\n## ", 1)[0]
    for verdict in ("**breaking**", "**changed**", "**confounded**", "**unchanged**"):
        assert verdict in section


def test_a_failure_while_publishing_never_stops_consumption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from structlog.testing import capture_logs

    from driftmon.core.transitions import Transition

    def broken(self: Transition) -> dict[str, Any]:
        raise ZeroDivisionError("a bug")

    rig = Rig(Settings())
    monkeypatch.setattr(Transition, "report", broken)
    with capture_logs() as logs:
        rig.feed(upgrade())
        rig.publisher.refresh(rig.partitions)
    failed = [e for e in logs if e["event"] == "transition publishing failed"]
    assert failed and {e["step"] for e in failed} >= {"publish", "refresh"}
    assert all("ZeroDivisionError" in e["error"] for e in failed)
    monkeypatch.undo()
    rig.publisher.refresh(rig.partitions)  # the next refresh shows it
    assert rig.verdict() == "changed"
    assert rig.alerts.active() == {("LLMModelTransition", *KEY.values(), "warning")}
