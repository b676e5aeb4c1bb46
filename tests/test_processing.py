"""The daemon's record processing around the core: drift flags that must not outlive a
drift, sinks that must not stop consumption, record times that are not times. Real
Daemon, Processor, metrics and sinks; no broker (the Kafka clients are not needed here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from driftmon.checkpoint import ActiveDrift
from driftmon.core.monitor import Detection
from driftmon.daemon import Daemon
from driftmon.settings import Settings
from driftmon.sinks import Sink, Sinks

A, B = TopicPartition("t", 0), TopicPartition("t", 1)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    settings = Settings(embeddings={"enabled": False}, state={"dir": str(tmp_path)})
    d = Daemon(settings, registry=CollectorRegistry())
    try:
        yield d
    finally:
        d.alerts.close(timeout=1)


def _flag(d: Daemon, model: str) -> float | None:
    labels = {"endpoint": "chat", "model": model, "feature": "refusal"}
    return d.registry.get_sample_value("driftmon_drift_active", labels)


def _drift(model: str) -> ActiveDrift:
    return ActiveDrift("chat", model, "refusal", "adwin", 1.0, 9.0, 400, 12, 0.0, 0.0)


def test_a_dropped_partitions_drift_flag_goes_though_its_key_lives_in_another(daemon):
    # Unkeyed producers: the key is in both partitions, the drift only in A's.
    a, b = daemon._new_state(), daemon._new_state()
    daemon.partitions[A], daemon.partitions[B] = a, b
    for state in (a, b):
        state.pipeline.monitor.update("chat", "m1", {"refusal": 0.0}, None)
    daemon._activate(_drift("m1"), a)
    assert _flag(daemon, "m1") == 1
    del daemon.partitions[A]  # what a revoke or a loss does, then:
    daemon.processor.dropped(a)
    assert _flag(daemon, "m1") in (0, None)  # not paging for a drift nobody watches


def test_an_input_drift_is_flagged_apart_and_never_as_a_model_drift(daemon):
    state = daemon._new_state()
    daemon.partitions[A] = state
    state.pipeline.monitor.update("chat", "m1", {"refusal": 0.0}, None)
    labels = {"endpoint": "chat", "model": "m1", "feature": "refusal"}
    explained = ActiveDrift(**{**_drift("m1").__dict__, "kind": "input_drift"})
    daemon._activate(explained, state)
    value = daemon.registry.get_sample_value
    assert (_flag(daemon, "m1"), value("driftmon_input_drift_active", labels)) == (0, 1)
    daemon._activate(_drift("m1"), state)  # the same feature, now a model drift
    assert (_flag(daemon, "m1"), value("driftmon_input_drift_active", labels)) == (1, 0)
    daemon.processor.series.drift_resolved(_drift("m1"))
    assert (_flag(daemon, "m1"), value("driftmon_input_drift_active", labels)) == (0, 0)


def test_input_model_errors_are_counted_once_by_type(daemon):
    state = daemon._new_state()
    daemon.partitions[A] = state
    state.pipeline.monitor.input_errors["LinAlgError"] += 2  # what Monitor counts on a raise

    def refresh() -> None:
        daemon.processor.series.refresh(
            [(A, state)],
            evicted=lambda keys: None,
            resolve=lambda s: None,
            highwater=lambda tp: None,
        )

    refresh()
    refresh()  # nothing new: not counted again
    state.pipeline.monitor.input_errors["LinAlgError"] += 1
    refresh()
    value = daemon.registry.get_sample_value
    assert value("driftmon_attribution_errors_total", {"error": "LinAlgError"}) == 3


def test_a_resolved_drift_of_an_evicted_key_leaves_no_flag_behind(daemon):
    state = daemon._new_state()
    daemon.partitions[A] = state
    state.pipeline.monitor.update("chat", "m1", {"refusal": 0.0}, None)
    drift = _drift("m1")
    daemon._activate(drift, state)
    daemon.partitions.clear()  # evicted from every monitor of this process
    daemon._remove_key_series("chat", "m1")  # so its drift series go
    daemon.processor.series.drift_resolved(drift)  # then the drift resolves as quiet
    assert _flag(daemon, "m1") is None


class _Broken(Sink):
    def __init__(self) -> None:
        self.calls = 0

    def add(self, detection: Detection, origin: object) -> None:
        self.calls += 1
        raise ValueError("year 55840 is out of range")

    def fire(self, drift: ActiveDrift) -> None:
        self.calls += 1
        raise ValueError("year 55840 is out of range")


class _Recorder(Sink):
    def __init__(self) -> None:
        self.fired: list[ActiveDrift] = []

    def fire(self, drift: ActiveDrift) -> None:
        self.fired.append(drift)


def test_a_sink_that_raises_stops_neither_consumption_nor_the_other_sinks():
    broken, recorder = _Broken(), _Recorder()
    sinks = Sinks([broken, recorder])
    sinks.fire(_drift("m1"))
    sinks.close(timeout=0.5)
    assert broken.calls == 1 and len(recorder.fired) == 1


def test_a_record_time_that_is_not_a_time_counts_as_none(daemon):
    state = daemon._new_state()
    daemon.partitions[A] = state
    seen: list[float | None] = []
    process = state.pipeline.process_message

    def spy(raw: bytes, index: int, ts: float | None):  # type: ignore[no-untyped-def]
        seen.append(ts)
        return process(raw, index, ts)

    state.pipeline.process_message = spy  # type: ignore[method-assign]
    daemon.processor.producer = SimpleNamespace(send=lambda *a, **k: None)
    event = b'{"endpoint": "chat", "model": "m1", "output": "hi"}'
    records = [
        SimpleNamespace(offset=i, timestamp=t, value=event, key=None, headers=[])
        for i, t in enumerate((1_700_000_000_000, 1_700_000_000_000_000, -1, 0))
    ]
    daemon.process_batch({A: records})
    assert seen == [1_700_000_000.0, None, None, None]
