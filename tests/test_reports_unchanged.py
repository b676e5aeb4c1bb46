"""Replay reports stay what they were: the guard of every restructuring.

Golden reports (``tests/golden/``) were written by the code before a restructure (issue 14:
seams for sinks, decoders, a feature registry, a detector protocol, the drift lifecycle in
the core); this test replays the same streams now and compares the report's fields that
existed then. A deliberate change of behaviour regenerates them, with the reason in the
commit:

    DRIFTMON_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_reports_unchanged.py

Streams: ``driftmon generate`` streams (three seeds, an upgrade, garbage lines) and the
real-upgrade streams of ``benchmarks/detection.py`` (AlpacaEval answers in ../shared,
which are read there and never copied here; only the reports, which hold no answer text,
are kept).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.replay import replay
from driftmon.settings import Settings

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "llm_outputs" / "alpaca_eval"
# The report fields that existed when the golden files were written.
COMPARED = ("events", "accepted", "rejected", "keys", "detections", "rejected_examples")
UPDATE = os.environ.get("DRIFTMON_UPDATE_GOLDEN") == "1"


def _settings() -> Settings:
    return Settings(embeddings={"enabled": False}, logging={"level": "warning"})


def _report(lines: list[str], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "stream.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = replay([str(path)], _settings()).report()
    for example in report.get("rejected_examples", []):
        example["file"] = "stream.jsonl"  # the temporary directory differs per run
    return {k: report[k] for k in COMPARED if k in report}


def _check(name: str, report: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        return
    assert path.exists(), f"{path} missing: run with DRIFTMON_UPDATE_GOLDEN=1 once"
    expected = json.loads(path.read_text())
    assert set(report) == set(expected)
    for key in COMPARED:
        assert report.get(key) == expected.get(key), f"{name}: report field {key!r} changed"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_stream_reports_are_unchanged(seed: int, tmp_path: Path) -> None:
    lines = list(
        generate(
            8000,
            n_keys=4,
            seed=seed,
            upgrade=Upgrade(endpoint="sql-assistant", at_event=4000),
            bad_line_every=97,
        )
    )
    report = _report(lines, tmp_path)
    assert report["detections"], "the upgrade must be detected for the comparison to mean much"
    _check(f"generate-seed{seed}", report)


def _detection_benchmark() -> Any:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import detection  # benchmarks/detection.py
    finally:
        sys.path.pop(0)
    return detection


@pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared alpaca_eval data not present at {DATA} (../shared/data)"
)
@pytest.mark.parametrize("pair", range(10))
def test_real_upgrade_stream_reports_are_unchanged(pair: int, tmp_path: Path) -> None:
    detection = _detection_benchmark()
    a, b, _kind = detection.PAIRS[pair]
    lines = detection.stream(
        detection.load_outputs(a, DATA), detection.load_outputs(b, DATA), seed=0
    )
    _check(f"alpaca-{a}--{b}", _report(lines, tmp_path))
