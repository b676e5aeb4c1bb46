"""``driftmon compare``, ``driftmon changelog`` and transitions in replay, through the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from driftmon.cli import main

WORDS = ["each", "answer", "explains", "the", "result", "in", "a", "plain", "careful", "line"]


def _answer(rng: random.Random, words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        out.extend(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        out[-1] += "."
    return " ".join(out)


def _golden(path: Path, model: str, scale: float, seed: int, refusals: float = 0.0) -> Path:
    """The same 400 prompts (ids); each prompt has its own answer length."""
    prompts = random.Random(99)
    lengths = [prompts.randint(15, 150) for _ in range(400)]
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i, words in enumerate(lengths):
            output = (
                "I'm sorry, but I can't help with that."
                if rng.random() < refusals
                else _answer(rng, int(words * scale))
            )
            record = {"endpoint": "golden", "model": model, "id": f"q{i}", "output": output}
            handle.write(json.dumps(record) + "\n")
    return path


def test_compare_pairs_a_golden_set_and_prints_the_changelog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _golden(tmp_path / "old.jsonl", "m-1", 1.0, 1)
    new = _golden(tmp_path / "new.jsonl", "m-2", 1.15, 2)
    report = tmp_path / "cmp.json"
    assert main(["compare", str(old), str(new), "--report", str(report)]) == 0
    out = capsys.readouterr()
    assert "## golden: m-1 → m-2 — changed (minor)" in out.out
    assert "| output_chars |" in out.out
    assert "paired by id" in out.err
    data = json.loads(report.read_text())
    assert data["paired"] is True
    (t,) = data["transitions"]
    assert t["verdict"] == "changed" and t["mode"] == "concurrent"
    assert t["new_events"] == 400 and t["old_events"] == 400
    assert data["unpaired"] == 0


def test_answers_without_a_partner_are_counted_not_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _golden(tmp_path / "old.jsonl", "m-1", 1.0, 1)
    new = _golden(tmp_path / "new.jsonl", "m-2", 1.0, 2)
    with new.open("a") as handle:  # prompts the old set never answered
        for i in range(30):
            record = {"endpoint": "golden", "model": "m-2", "id": f"extra{i}", "output": "Hi."}
            handle.write(json.dumps(record) + "\n")
    report = tmp_path / "cmp.json"
    assert main(["compare", str(old), str(new), "--report", str(report)]) == 0
    assert "30 new answers without a partner were not compared" in capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["unpaired"] == 30 and data["transitions"][0]["new_events"] == 400


def test_compare_exits_1_on_a_breaking_change(tmp_path: Path) -> None:
    old = _golden(tmp_path / "old.jsonl", "m-1", 1.0, 1)
    new = _golden(tmp_path / "new.jsonl", "m-2", 1.0, 2, refusals=0.2)
    assert main(["compare", str(old), str(new)]) == 1


def test_compare_exits_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _golden(tmp_path / "old.jsonl", "m-1", 1.0, 1)
    assert main(["compare", str(old), str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: cannot read" in capsys.readouterr().err
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n[1, 2]\n")
    assert main(["compare", str(old), str(garbage)]) == 2
    assert "no answer accepted" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"endpoint": "elsewhere", "model": "x", "output": "hi"}) + "\n")
    assert main(["compare", str(old), str(other)]) == 2
    assert "no endpoint in both files" in capsys.readouterr().err


def test_a_labelled_upgrade_in_replay_is_a_transition_in_the_report_and_changelog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "labelled.jsonl"
    assert main(["generate", "--events", "6000", "--upgrade-at", "3000",
                 "--upgrade-model", "gpt-4o-2024-11-20"]) == 0  # fmt: skip
    stream.write_text(capsys.readouterr().out)
    report = tmp_path / "report.json"
    assert main(["replay", str(stream), "--report", str(report)]) == 0
    assert "model transitions" in capsys.readouterr().out
    (t,) = json.loads(report.read_text())["transitions"]
    assert (t["endpoint"], t["to_model"]) == ("sql-assistant", "gpt-4o-2024-11-20")
    assert t["verdict"] in ("changed", "breaking") and t["new_events_at_verdict"] <= 64
    rows = {f["feature"]: f for f in t["features"]}
    assert rows["code_fence"]["unit"] == "%" and rows["code_fence"]["verdict"] == "changed"
    assert main(["changelog", str(report)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## sql-assistant: gpt-4o-mini-2024-07-18 → gpt-4o-2024-11-20")
    assert main(["changelog", str(report), "--endpoint", "nowhere"]) == 0
    assert "No model transitions." in capsys.readouterr().out


def test_changelog_refuses_what_is_not_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["changelog", str(bad)]) == 2
    assert "no 'transitions' list" in capsys.readouterr().err
    assert main(["changelog"]) == 2
    assert main(["changelog", str(tmp_path / "missing.json")]) == 2
