"""Poison records (issue 18 item 1): a record that makes the core raise is rejected as
``internal_error`` and the stream goes on; deep or huge JSON answers are bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftmon.config import pipeline_config
from driftmon.core.events import Event, Rejection
from driftmon.core.features import MAX_JSON_DEPTH, MAX_SCHEMA_CHARS, MAX_SCHEMA_DEPTH
from driftmon.core.pipeline import Pipeline
from driftmon.demo.synthetic import generate
from driftmon.settings import Settings

SELF_REFERENCING = {"type": "array", "items": {"$ref": "#"}}
ENDPOINTS: dict[str, Any] = {
    "poison": {"format": "json", "json_schema": SELF_REFERENCING},
    "indirect": {
        "json_schema": {
            "$defs": {
                "n": {"allOf": [{"$ref": "#/$defs/m"}]},
                "m": {
                    "oneOf": [
                        {"type": "array", "items": {"$ref": "#/$defs/n"}},
                        {"type": "integer"},
                    ]
                },
            },
            "$ref": "#/$defs/n",
        }
    },
}
# The record of the issue: 300 nested brackets under a self-referencing schema.
POISON = json.dumps({"endpoint": "poison", "model": "m", "output": "[" * 300 + "]" * 300})
SECRET = "the answer mentions Alice Example"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def record(output: str, endpoint: str = "poison") -> str:
    return json.dumps({"endpoint": endpoint, "model": "m", "output": output})


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(pipeline_config(Settings(endpoints=ENDPOINTS, embeddings={"enabled": False})))


def test_the_issue_poison_record_counts_as_not_valid_instead_of_raising(pipeline):
    out = pipeline.process(POISON, 0)
    assert out.rejection is None and out.event is not None
    assert out.features["json_valid"] == 1.0 and out.features["schema_valid"] == 0.0
    assert pipeline.accepted == 1 and not pipeline.rejected


@pytest.mark.parametrize("endpoint", ["poison", "indirect"])
def test_nesting_is_schema_valid_up_to_the_bound_and_invalid_past_it(pipeline, endpoint):
    at = pipeline.process(record(nested(MAX_SCHEMA_DEPTH), endpoint)).features
    past = pipeline.process(record(nested(MAX_SCHEMA_DEPTH + 1), endpoint)).features
    assert at["schema_valid"] == 1.0 and past["schema_valid"] == 0.0
    for depth in (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 5000):
        deep = pipeline.process(record(nested(depth), endpoint))
        assert deep.rejection is None and deep.features["schema_valid"] == 0.0
    assert pipeline.accepted == 5 and not pipeline.rejected


def test_json_valid_up_to_orjson_depth_limit(pipeline):
    def json_valid(depth: int) -> float:
        return pipeline.process(record(nested(depth))).features["json_valid"]

    assert json_valid(MAX_SCHEMA_DEPTH + 1) == json_valid(MAX_JSON_DEPTH) == 1.0
    assert json_valid(MAX_JSON_DEPTH + 1) == json_valid(100_000) == 0.0
    # Past orjson's limit the slow-path parser is tried too (it would take 1e400).
    deep_inf = "[" * MAX_JSON_DEPTH + "1e400" + "]" * MAX_JSON_DEPTH
    assert pipeline.process(record(deep_inf)).features["json_valid"] == 0.0
    assert pipeline.process(record("[1e400]")).features["json_valid"] == 1.0


def test_brackets_inside_strings_and_wide_documents_are_not_depth(pipeline):
    wide = json.dumps([[[i]] for i in range(500)])  # 1 001 brackets, depth 3
    in_string = json.dumps(["[" * 200, {"k": "{" * 200}])
    for output in (wide, in_string):
        f = pipeline.process(record(output)).features
        assert f["json_valid"] == 1.0, output[:40]
    assert pipeline.process(record(wide)).features["schema_valid"] == 0.0  # ints: not arrays
    assert (
        pipeline.process(record(json.dumps([[[]] for _ in range(500)]))).features["schema_valid"]
        == 1.0
    )


def test_an_answer_too_long_to_validate_counts_as_not_schema_valid(pipeline):
    inner = "[]," * ((MAX_SCHEMA_CHARS - 2) // 3)
    fits = "[" + inner[:-1] + "]"
    assert len(fits) <= MAX_SCHEMA_CHARS
    too_long = "[" + inner + inner[:-1] + "]"
    assert pipeline.process(record(fits)).features["schema_valid"] == 1.0
    f = pipeline.process(record(too_long)).features
    assert f["json_valid"] == 1.0 and f["schema_valid"] == 0.0


def test_an_exception_rejects_the_record_with_its_type_only_and_the_next_is_processed(
    pipeline, monkeypatch
):
    extract = pipeline.extractor.extract

    def failing(event: Event) -> dict[str, float]:
        if SECRET in event.output:
            raise ValueError(f"cannot handle {event.output!r}")
        return extract(event)

    monkeypatch.setattr(pipeline.extractor, "extract", failing)
    bad = pipeline.process(record(SECRET, "support"), 7)
    assert bad.rejection == Rejection(reason="internal_error", detail="ValueError")
    assert bad.event is None and bad.features == {} and bad.detections == []
    assert SECRET not in repr(bad)
    assert pipeline.rejected == {"internal_error": 1} and pipeline.accepted == 0
    assert pipeline.monitor.get("support", "m") is None  # nothing was fed

    good = pipeline.process(record("A fine answer.", "support"), 8)
    assert good.rejection is None and good.event is not None
    assert pipeline.accepted == 1 and pipeline.rejected == {"internal_error": 1}
    assert pipeline.monitor.get("support", "m").events == 1


def test_an_exception_inside_the_monitor_keeps_what_was_updated_before_it(pipeline, monkeypatch):
    # A value the compiled detectors cannot take, after a good one: the real update fails
    # half-way through the key's streams.
    monkeypatch.setattr(
        pipeline.extractor, "extract", lambda event: {"output_chars": 3.0, "latency": "x"}
    )
    out = pipeline.process(record("x", "support"))
    assert out.rejection is not None and out.rejection.reason == "internal_error"
    assert out.rejection.detail == "TypeError"
    state = pipeline.monitor.get("support", "m")
    assert state is not None and state.events == 1  # documented: no rollback
    assert state.streams["output_chars"].n == 1
    assert pipeline.rejected == {"internal_error": 1} and pipeline.accepted == 0


def test_undecodable_and_odd_records_never_raise(pipeline):
    odd: list[Any] = [
        b"\xff\xfe\x00",
        b"{" * 100_000,
        b"[" * 100_000,
        None,
        12,
        record("\ud800"),  # lone surrogate, escaped in JSON
        json.dumps({"endpoint": "poison", "model": "m", "output": "[" + "1," * 100_000 + "1]"}),
    ]
    for i, raw in enumerate(odd):
        out = pipeline.process(raw, i)
        assert (out.event is None) != (out.rejection is None)
    assert pipeline.accepted + sum(pipeline.rejected.values()) == len(odd)


def test_a_failing_embedding_update_returns_nothing_and_is_counted(pipeline):
    assert pipeline.process_embedding("support", "m", "not a vector", 0, None) == []  # type: ignore[arg-type]
    assert pipeline.embedding_errors and sum(pipeline.embedding_errors.values()) == 1
    assert not pipeline.rejected  # the record itself was accepted already


def _replay(
    tmp_path: Path, lines: list[str], prelude: str = ""
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(lines) + "\n")
    config = tmp_path / "driftmon.yaml"
    config.write_text(yaml.safe_dump({"endpoints": ENDPOINTS, "embeddings": {"enabled": False}}))
    report = tmp_path / "report.json"
    code = prelude + "import sys; from driftmon.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["replay", "--config", str(config), "--report", str(report), str(data)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc, json.loads(report.read_text())


def test_replay_of_the_issue_poison_record_writes_a_report(tmp_path):
    lines = list(generate(300, n_keys=4, seed=5))
    lines.insert(150, POISON)
    _, report = _replay(tmp_path, lines)
    assert report["events"] == len(lines) == report["accepted"]
    assert {"endpoint": "poison", "model": "m", "events": 1, "feedback": 0} in report["keys"]


def test_replay_rejects_a_record_that_raises_and_goes_on(tmp_path):
    lines = list(generate(300, n_keys=4, seed=5))
    lines[100] = record(SECRET, "support-chat")
    # The real CLI in a subprocess, with one bug injected: the extractor raises on one
    # answer, quoting it in the message as a careless library might.
    prelude = (
        "from driftmon.core.features import FeatureExtractor as F\n"
        "extract = F.extract\n"
        "def failing(self, event):\n"
        f"    if {SECRET!r} in event.output: raise KeyError(event.output)\n"
        "    return extract(self, event)\n"
        "F.extract = failing\n"
    )
    proc, report = _replay(tmp_path, lines, prelude)
    assert report["events"] == len(lines)
    assert report["rejected"] == {"internal_error": 1}
    assert report["accepted"] == len(lines) - 1
    assert SECRET not in proc.stdout + proc.stderr + json.dumps(report)


def test_a_schema_deeper_in_frames_than_the_stack_counts_as_not_schema_valid():
    # 30 references per level: 40 levels, within MAX_SCHEMA_DEPTH, exhaust the stack.
    defs: dict[str, Any] = {f"r{i}": {"allOf": [{"$ref": f"#/$defs/r{i + 1}"}]} for i in range(30)}
    defs["r30"] = {"type": "array", "items": {"$ref": "#/$defs/r0"}}
    settings = Settings(endpoints={"chain": {"json_schema": {"$defs": defs, "$ref": "#/$defs/r0"}}})
    pipeline = Pipeline(pipeline_config(settings))
    shallow = pipeline.process(record(nested(2), "chain"))
    deep = pipeline.process(record(nested(40), "chain"))
    assert shallow.features["schema_valid"] == 1.0
    assert deep.rejection is None and deep.features["schema_valid"] == 0.0
