from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from driftmon.demo.synthetic import BAD_LINE_REASONS, Upgrade, default_demo_stream, generate

PREAMBLE = re.compile(
    r"(?:sure|certainly|of course|great question|here (?:is|are|'s)|happy to help)\b", re.I
)
NAMED = {"support-chat", "sql-assistant", "summarizer", "code-helper"}


def reason(line: str) -> str | None:
    """The rejection reason SPEC §1 gives a line, or None when it is a valid event."""
    try:
        obj = json.loads(line)
    except ValueError:
        return "not_json"
    if not isinstance(obj, dict):
        return "not_object"
    if obj.get("kind") == "feedback":
        if not all(k in obj for k in ("endpoint", "model", "value")):
            return "missing_field"
        return None if -1 <= obj["value"] <= 1 else "out_of_range"
    if not all(k in obj for k in ("endpoint", "model", "output")):
        return "missing_field"
    return None if isinstance(obj["output"], str) else "bad_type"


def completions(lines: list[str], endpoint: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for i, line in enumerate(lines):
        ev = json.loads(line)
        if ev.get("kind") != "feedback" and ev["endpoint"] == endpoint:
            out.append((i, ev))
    return out


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def rate(values: list[bool]) -> float:
    return sum(values) / len(values)


def epoch_seconds(ts: str | int) -> float:
    if isinstance(ts, int):
        return ts / 1000
    return datetime.fromisoformat(ts).timestamp()


def test_deterministic_per_seed() -> None:
    a = list(generate(3000, seed=7))
    assert a == list(generate(3000, seed=7))
    assert a != list(generate(3000, seed=8))
    assert list(generate(1000, seed=7)) == a[:1000]  # a shorter stream is a prefix


@pytest.mark.parametrize(("n_keys", "n_events"), [(1, 500), (4, 4000), (100, 30_000)])
def test_count_and_keys(n_keys: int, n_events: int) -> None:
    lines = list(generate(n_events, n_keys=n_keys, seed=3))
    assert len(lines) == n_events
    events = [json.loads(line) for line in lines]
    keys = {(e["endpoint"], e["model"]) for e in events if e.get("kind") != "feedback"}
    endpoints = {endpoint for endpoint, _ in keys}
    assert len(keys) == len(endpoints) == n_keys
    if n_keys >= 4:
        assert endpoints >= NAMED
    if n_keys == 100:
        assert "endpoint-099" in endpoints
        assert {model for _, model in keys} >= {"gpt-4o-2024-08-06", "llama-3.1-70b-instruct"}


def test_event_shape() -> None:
    eps, n = 50.0, 6000
    lines = list(generate(n, n_keys=8, seed=1, events_per_second=eps))
    feedback_events, completion_events, times = [], [], []
    for line in lines:
        assert "\n" not in line and reason(line) is None
        ev = json.loads(line)
        times.append(epoch_seconds(ev["timestamp"]))
        if ev.get("kind") == "feedback":
            assert ev["name"] == "thumbs" and ev["value"] in (-1, 1) and isinstance(ev["id"], str)
            feedback_events.append(ev)
            continue
        assert ev.get("kind", "completion") == "completion"
        assert isinstance(ev["endpoint"], str) and isinstance(ev["model"], str)
        assert isinstance(ev["id"], str) and ev["provider"] and ev["requested_model"]
        assert isinstance(ev["input_tokens"], int) and ev["input_tokens"] >= 0
        assert isinstance(ev["output_tokens"], int) and ev["output_tokens"] >= 1
        assert ev["finish_reason"] in ("stop", "length") and ev["latency_ms"] >= 0
        fb = ev.get("feedback")
        assert fb is None or fb in (-1, 1) or fb == {"name": "thumbs", "value": fb["value"]}
        completion_events.append(ev)
    assert times == sorted(times)
    assert times[-1] - times[0] == pytest.approx(n / eps, rel=0.1)
    assert {type(json.loads(line)["timestamp"]) for line in lines} == {str, int}
    assert 0.03 < len(feedback_events) / n < 0.07
    c = completion_events
    assert 0.15 < rate(["feedback" in e for e in c]) < 0.25
    assert (
        rate(
            [e.get("feedback") in (1, {"name": "thumbs", "value": 1}) for e in c if "feedback" in e]
        )
        > 0.7
    )
    assert 0 < rate([e["finish_reason"] == "length" for e in c]) < 0.03
    assert 0 < rate(["kind" in e for e in c]) < 1  # both completion forms appear
    lengths = [len(e["output"]) for e in c]
    assert 300 < statistics.median(lengths) < 3000 and max(lengths) > 3000
    ratios = [e["output_tokens"] * 4 / len(e["output"]) for e in c]
    assert statistics.mean(ratios) == pytest.approx(1.0, abs=0.05)
    assert rate([e["output"].startswith("I'm sorry") for e in c]) < 0.02
    by_endpoint = {ep: [e["output"] for e in c if e["endpoint"] == ep] for ep in NAMED}
    assert rate(["```" in o for o in by_endpoint["code-helper"]]) > 0.5
    assert rate(["```" in o for o in by_endpoint["support-chat"]]) == 0
    assert rate(["**" in o for o in by_endpoint["summarizer"]]) > 0.05
    assert (
        rate([bool(re.search(r"^(?:- |\d+\. )", o, re.M)) for o in by_endpoint["summarizer"]]) > 0.3
    )
    assert rate([o.startswith("#") for o in by_endpoint["summarizer"]]) > 0.2
    sql = by_endpoint["sql-assistant"]
    assert rate([is_json(o) for o in sql]) > 0.95
    assert {"query", "confidence"} <= json.loads(next(o for o in sql if is_json(o))).keys()


def test_demo_stream_silent_upgrade() -> None:
    lines, upgrade = default_demo_stream()
    assert len(lines) == 12_000 and upgrade == Upgrade("sql-assistant", 6000)
    sql = completions(lines, "sql-assistant")
    before = [e for i, e in sql if i < upgrade.at_event]
    after = [e for i, e in sql if i >= upgrade.at_event]
    assert len(before) > 500 and len(after) > 500
    assert {e["model"] for _, e in sql} == {"gpt-4o-mini-2024-07-18"}  # silent: label unchanged

    def mean_len(evs: list[dict[str, Any]]) -> float:
        return statistics.mean(len(e["output"]) for e in evs)

    assert mean_len(after) > 1.3 * mean_len(before)
    pre_before = rate([bool(PREAMBLE.match(e["output"])) for e in before])
    pre_after = rate([bool(PREAMBLE.match(e["output"])) for e in after])
    assert pre_before < 0.05 and pre_after > 0.45
    assert rate([is_json(e["output"]) for e in before]) > 0.95
    assert rate([is_json(e["output"]) for e in after]) < 0.2
    assert rate(["```json" in e["output"] for e in after]) > 0.8
    fb_before = [e["feedback"] for e in before if e.get("feedback") in (-1, 1)]
    fb_after = [e["feedback"] for e in after if e.get("feedback") in (-1, 1)]
    assert rate([v > 0 for v in fb_before]) > 0.72 and rate([v > 0 for v in fb_after]) < 0.68
    for endpoint in NAMED - {"sql-assistant"}:  # the other endpoints do not move
        evs = completions(lines, endpoint)
        early = mean_len([e for i, e in evs if i < upgrade.at_event])
        late = mean_len([e for i, e in evs if i >= upgrade.at_event])
        assert 0.85 < late / early < 1.15


def test_upgrade_of_prose_endpoint_adds_markdown_and_new_model() -> None:
    up = Upgrade("support-chat", 4000, new_model="gpt-4.1-2025-04-14")
    lines = list(generate(8000, seed=2, upgrade=up))
    chat = completions(lines, "support-chat")
    before = [e for i, e in chat if i < up.at_event]
    after = [e for i, e in chat if i >= up.at_event]
    assert {e["model"] for e in before} == {"gpt-4o-2024-08-06"}
    assert {e["model"] for e in after} == {"gpt-4.1-2025-04-14"}
    events = [json.loads(line) for line in lines]
    assert len({(e["endpoint"], e["model"]) for e in events}) == 5
    features: list[tuple[Callable[[str], float], float]] = [
        (len, 1.3),
        (lambda o: "**" in o, 2.0),
        (lambda o: bool(re.search(r"^(?:- |\d+\. )", o, re.M)), 1.5),
        (lambda o: bool(PREAMBLE.match(o)), 2.0),
    ]
    for feature, factor in features:
        old = statistics.mean(feature(e["output"]) for e in before)
        new = statistics.mean(feature(e["output"]) for e in after)
        assert new > factor * old


def test_bad_lines_positions_and_reasons() -> None:
    k, n = 7, 300
    bad = list(generate(n, seed=5, bad_line_every=k))
    clean = list(generate(n, seed=5))
    assert len(bad) == n
    for i, (b, c) in enumerate(zip(bad, clean, strict=True)):
        if (i + 1) % k:
            assert b == c and reason(b) is None
        else:
            assert reason(b) == BAD_LINE_REASONS[((i + 1) // k - 1) % len(BAD_LINE_REASONS)]
    assert [reason(x) for x in bad[k - 1 : 5 * k : k]] == list(BAD_LINE_REASONS)
    lines, _ = default_demo_stream(bad_line_every=2000)
    assert sum(reason(x) is not None for x in lines) == 6


def test_invalid_arguments_raise_at_call() -> None:
    with pytest.raises(ValueError):
        generate(10, upgrade=Upgrade("no-such-endpoint", 5))
    with pytest.raises(ValueError):
        generate(10, upgrade=Upgrade("support-chat", -1))
    with pytest.raises(ValueError):
        generate(-1)
    with pytest.raises(ValueError):
        generate(10, bad_line_every=-2)
    with pytest.raises(ValueError):
        generate(10, n_keys=0)
    assert list(generate(0)) == []
