"""Input-drift attribution end to end (issue 16, docs/attribution.md): the daemon as a real
process, a real Kafka-protocol broker (tansu) and a real Alertmanager. One model answers
two families of prompts, code requests with fenced code and "explain briefly" requests
with one short paragraph; halfway the prompt mix flips from 90 % code to 90 % prose. The
answers change because the prompts did, so the detections are ``input_drift``: the
detections topic, ``LLMInputDrift`` at severity ``info`` and
``driftmon_input_drift_active`` agree. With ``attribution.enabled: false`` the same stream
pages ``LLMOutputDrift``."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from driftmon.demo.tansu import EmbeddedBroker
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.support import (
    Alertmanager,
    DaemonProcess,
    consume_all,
    daemon_settings,
    metric,
    needs_alertmanager,
    produce,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

TOPIC = "llm-outputs"
ENDPOINT: Final = "assistant"
MODEL: Final = "gpt-4o-2024-08-06"
# Events per phase: the output detectors and the input model both learn on the first 300.
PHASE_EVENTS: Final = 1000
ATTRIBUTION: Final = {"reference_events": 300}  # the lower bound is 200

TASKS: Final = (
    "reverse a string",
    "parse a csv file",
    "sort a list of numbers",
    "count the words in a text",
    "read a json file",
    "compute a factorial",
    "merge two dictionaries",
    "find the prime numbers below n",
    "download a web page",
    "validate an email address",
    "flatten a nested list",
    "remove duplicates from a list",
)
TOPICS: Final = (
    "photosynthesis",
    "inflation",
    "the water cycle",
    "plate tectonics",
    "compound interest",
    "the french revolution",
    "black holes",
    "vaccines",
    "supply and demand",
    "the immune system",
    "machine learning",
    "climate change",
)
FILLER: Final = "the a of to and in is it that for on with as this by are be from at which can"
TOKENS: Final = ("x", "y", "result", "=", "+", "data", "len(data)", "for", "in")


def code_answer(rng: random.Random, task: str) -> str:
    head = [f"Here is a function to {task}:", "", "```python", "def solve(data):"]
    body = [
        "    " + " ".join(rng.choice(TOKENS) for _ in range(rng.randint(3, 8)))
        for _ in range(rng.randint(4, 12))
    ]
    tail = ["    return result", "```", "", "This runs in linear time."]
    return "\n".join([*head, *body, *tail])


def prose_answer(rng: random.Random, topic: str) -> str:
    words = FILLER.split()
    return f"In short, {topic} " + " ".join(rng.choice(words) for _ in range(rng.randint(25, 50)))


def stream(seed: int = 7) -> list[str]:
    """The same model throughout; what it answers depends only on the prompt's family
    (plus noise). Code requests are 90 % of the first phase, 10 % of the second."""
    rng = random.Random(seed)
    lines = []
    for i in range(2 * PHASE_EVENTS):
        code_share = 0.9 if i < PHASE_EVENTS else 0.1
        if rng.random() < code_share:
            task = rng.choice(TASKS)
            prompt, output = f"Write python code to {task}.", code_answer(rng, task)
        else:
            topic = rng.choice(TOPICS)
            prompt, output = f"Explain briefly {topic}.", prose_answer(rng, topic)
        event = {"endpoint": ENDPOINT, "model": MODEL, "input": prompt, "output": output}
        lines.append(json.dumps(event))
    return lines


def replayed(lines: list[str], tmp_path: Path, attribution: dict[str, Any]) -> list[Any]:
    """(offset, feature, detector, kind) of what the core finds offline on ``lines``."""
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = Settings(embeddings={"enabled": False}, attribution=attribution)
    result = replay([str(path)], settings, progress_stream=io.StringIO())
    return sorted((d.event_index, d.feature, d.detector, d.kind) for d in result.detections)


def published(broker: EmbeddedBroker) -> list[Any]:
    """(offset, feature, detector, kind) on the detections topic, de-duplicated."""
    seen = set()
    for rec in consume_all(broker.bootstrap, "driftmon.detections"):
        d = json.loads(rec.value)
        assert (d["endpoint"], d["model"]) == (ENDPOINT, MODEL), d
        seen.add((d["offset"], d["feature"], d["detector"], d["kind"]))
    return sorted(seen)


def settled(get: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    """``get()`` once ``done`` with it, or its last value after ``timeout`` seconds (for
    the caller to assert on, with a message that shows it)."""
    deadline = time.monotonic() + timeout
    value = get()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = get()
    return value


def drift_alerts(am: Alertmanager) -> dict[str, dict[str, str]]:
    """Feature -> labels of every active LLMOutputDrift or LLMInputDrift alert."""
    alerts = [
        a["labels"]
        for a in am.alerts()
        if a["labels"]["alertname"] in ("LLMOutputDrift", "LLMInputDrift")
    ]
    by_feature = {labels["feature"]: labels for labels in alerts}
    assert len(by_feature) == len(alerts), alerts  # one alert per feature, never both
    return by_feature


@needs_alertmanager
@pytest.mark.parametrize(
    ("enabled", "kind", "alertname", "severity", "gauge", "other_gauge"),
    [
        (
            True,
            "input_drift",
            "LLMInputDrift",
            "info",
            "driftmon_input_drift_active",
            "driftmon_drift_active",
        ),
        # The control: the same stream without attribution pages as a model change.
        (
            False,
            "drift",
            "LLMOutputDrift",
            "warning",
            "driftmon_drift_active",
            "driftmon_input_drift_active",
        ),
    ],
    ids=["attribution", "attribution-off"],
)
def test_a_prompt_mix_change_is_an_input_drift(
    broker, tmp_path, enabled, kind, alertname, severity, gauge, other_gauge
):
    lines = stream()
    attribution = {**ATTRIBUTION, "enabled": enabled}
    expected = replayed(lines, tmp_path, attribution)
    features = {feature for _, feature, _, _ in expected}
    # The mix change moves what the two families' answers differ in.
    assert {"code_fence", "output_chars", "paragraphs"} <= features, expected
    assert {k for *_, k in expected} == {kind}, expected
    assert all(offset >= PHASE_EVENTS for offset, *_ in expected), expected

    am = Alertmanager(tmp_path / "am").start()
    try:
        produce(broker.bootstrap, TOPIC, lines)
        cfg = daemon_settings(
            broker.bootstrap,
            TOPIC,
            tmp_path / "state",
            "driftmon-test",
            {},
            alertmanager={"urls": [am.url]},
            attribution=attribution,
        )
        with running(DaemonProcess(tmp_path, cfg)) as daemon:
            daemon.wait_ready()
            wait_for(lambda: daemon.events_seen() >= len(lines), timeout=90, every=0.5)

            # The daemon finds what the replay finds, with the same kind.
            got = settled(lambda: published(broker), lambda g: g == expected, timeout=30)
            assert got == expected

            alerts = settled(lambda: drift_alerts(am), lambda a: set(a) >= features, timeout=30)
            assert set(alerts) == features, alerts
            for labels in alerts.values():
                assert labels["alertname"] == alertname, labels
                assert labels["severity"] == severity, labels
                assert (labels["endpoint"], labels["model"]) == (ENDPOINT, MODEL), labels

            body = daemon.metrics()
            for feature in features:
                key = {"endpoint": ENDPOINT, "model": MODEL, "feature": feature}
                assert metric(body, gauge, **key) == 1.0, (feature, daemon.tail())
                assert metric(body, other_gauge, **key) == 0.0, feature
    finally:
        am.stop()
