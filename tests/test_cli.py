"""The ``driftmon`` command as a new user meets it: real files, real subprocesses, a real pty."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from driftmon.demo.synthetic import generate
from driftmon.replay import PROGRESS_EVERY

SECRET = "Alice Example, 12 Secret Lane, card 4111-1111-1111-1111"
GOOD = {"endpoint": "chat", "model": "m1", "output": "Hello there."}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # No inherited DRIFTMON_* settings: each test says what it sets.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
    env.update(extra or {})
    return env


def driftmon(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftmon", *args],
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=cwd,
        timeout=300,
    )


def _jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return path


def _replay_report(tmp_path: Path, *files: Path, env: dict[str, str] | None = None):
    out = tmp_path / "report.json"
    proc = driftmon("replay", *map(str, files), "--report", str(out), env=env)
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def test_version_from_the_entry_point() -> None:
    entry_point = Path(sys.executable).parent / "driftmon"
    proc = subprocess.run(
        [str(entry_point), "--version"], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"driftmon {importlib.metadata.version('driftmon')}"


def test_replay_of_a_directory_says_it_is_one(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD) + "\n")
    proc = driftmon("replay", str(tmp_path))
    assert proc.returncode == 2
    assert f"{tmp_path} is a directory" in proc.stderr
    assert f"driftmon replay {tmp_path}/*.jsonl" in proc.stderr
    assert "no such file" not in proc.stderr and "Traceback" not in proc.stderr


def test_every_record_rejected_exits_3_and_the_report_shows_where_and_why(tmp_path: Path) -> None:
    src = _jsonl(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"model": "m", "output": SECRET}) + "\n",
            "\n",  # blank lines are not records, but they are lines
            "not json " + SECRET + "\n",
            json.dumps(GOOD | {"output": SECRET, "latency_ms": -1}) + "\n",
            json.dumps(GOOD | {"output": SECRET, "feedback": {"value": "up"}}) + "\n",
            json.dumps([SECRET]) + "\n",
        ],
    )
    proc, report = _replay_report(tmp_path, src)
    assert proc.returncode == 3, proc.stderr
    assert "no record was accepted: every record was rejected" in proc.stderr
    assert report["accepted"] == 0 and report["events"] == 5
    assert report["rejected_examples"] == [
        {
            "file": str(src),
            "line": 1,
            "reason": "missing_field",
            "field": "endpoint",
            "detail": "endpoint: missing",
        },
        {
            "file": str(src),
            "line": 3,
            "reason": "not_json",
            "field": None,
            "detail": "invalid JSON at char 0",
        },
        {
            "file": str(src),
            "line": 4,
            "reason": "out_of_range",
            "field": "latency_ms",
            "detail": "latency_ms: must be >= 0",
        },
        {
            "file": str(src),
            "line": 5,
            "reason": "bad_type",
            "field": "feedback.value",
            "detail": "feedback.value: expected number, got string",
        },
        {
            "file": str(src),
            "line": 6,
            "reason": "not_object",
            "field": None,
            "detail": "top level is array, expected object",
        },
    ]
    # The summary shows them too; the output text appears nowhere.
    assert "first 5 rejected records:" in proc.stdout
    assert "line 4" in proc.stdout and "latency_ms: must be >= 0" in proc.stdout
    for text in (proc.stdout, proc.stderr, (tmp_path / "report.json").read_text()):
        assert "Secret Lane" not in text


def test_rejected_examples_stop_at_20_and_one_good_record_exits_0(tmp_path: Path) -> None:
    first = _jsonl(tmp_path / "one.jsonl", [json.dumps(GOOD) + "\n"] + ["{oops\n"] * 15)
    second = _jsonl(tmp_path / "two.jsonl", ["\n", "{oops\n"] * 10)
    proc, report = _replay_report(tmp_path, first, second)
    assert proc.returncode == 0, proc.stderr
    assert report["accepted"] == 1 and report["rejected"] == {"not_json": 25}
    where = [(e["file"], e["line"]) for e in report["rejected_examples"]]
    # Lines are numbered within each file, blank lines counted, as an editor shows them.
    assert where == [(str(first), n) for n in range(2, 17)] + [
        (str(second), n) for n in (2, 4, 6, 8, 10)
    ]
    # The summary shows the first 10, with the file when there are several.
    assert f"{first}:11 " in proc.stdout and f"{first}:12 " not in proc.stdout


@pytest.mark.parametrize(
    ("text", "command"),
    [
        (json.dumps([GOOD, GOOD, GOOD], indent=2), "jq -c '.[]'"),
        (json.dumps([GOOD, GOOD]), "jq -c '.[]'"),
        ("\n" + json.dumps(GOOD, indent=2), "jq -c ."),
    ],
    ids=["pretty-printed array", "one-line array", "multi-line document"],
)
def test_json_that_is_not_jsonl_gets_a_hint(tmp_path: Path, text: str, command: str) -> None:
    src = tmp_path / "export.json"
    src.write_text(text + "\n")
    proc = driftmon("replay", str(src))
    assert proc.returncode == 3
    assert (
        f"{src}: driftmon expects one JSON object per line (JSONL); convert with: "
        f"{command} {src}" in proc.stdout
    )


def test_jsonl_gets_no_hint_even_when_its_first_record_is_bad(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "ok.jsonl", ["{broken\n", json.dumps(GOOD) + "\n"])
    proc = driftmon("replay", str(src))
    assert proc.returncode == 0, proc.stderr
    assert "JSONL" not in proc.stdout


@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty", "blank lines"])
def test_input_without_records_exits_3(tmp_path: Path, content: str) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text(content)
    proc = driftmon("replay", str(src))
    assert proc.returncode == 3
    assert "no record was accepted: the input has no records" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def small_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "stream.jsonl"
    path.write_text("\n".join(generate(3000, n_keys=2, seed=3)) + "\n")
    return path


@pytest.mark.parametrize("enabled", [None, "true"], ids=["default", "embeddings.enabled=true"])
def test_replay_embeds_nothing_without_the_flag(
    small_stream: Path, tmp_path: Path, enabled: str | None
) -> None:
    env = {"DRIFTMON_EMBEDDINGS__ENABLED": enabled} if enabled else None
    proc, report = _replay_report(tmp_path, small_stream, env=env)
    assert proc.returncode == 0, proc.stderr
    assert report["embedded"] == 0
    assert "embeddings off (--embeddings to enable)" in proc.stdout


def test_the_embeddings_flag_turns_them_on_whatever_the_setting(small_stream: Path) -> None:
    # A model that cannot be found proves the flag loads one, without paying for a real one.
    proc = driftmon(
        "replay",
        "--embeddings",
        str(small_stream),
        env={"DRIFTMON_EMBEDDINGS__ENABLED": "false", "DRIFTMON_EMBEDDINGS__MODEL": "/no/model"},
    )
    assert proc.returncode == 2
    assert "/no/model" in proc.stderr and "run without --embeddings" in proc.stderr


def _read_terminal(controller: int) -> bytes:
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            return shown
        if not chunk:
            return shown
        shown += chunk


def test_progress_on_a_terminal_moves_while_the_input_stalls(small_stream: Path) -> None:
    lines = small_stream.read_bytes().splitlines(keepends=True)
    before_stall = 10 * PROGRESS_EVERY
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftmon", "replay", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=_env({"DRIFTMON_LOGGING__LEVEL": "warning"}),
        )
        os.close(terminal)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"".join(lines[:before_stall]))
        proc.stdin.flush()
        time.sleep(3.0)  # a producer that pauses: the display must still say where it is
        proc.stdin.write(b"".join(lines[before_stall:]))
        proc.stdin.close()
        shown = _read_terminal(controller).decode()
        assert proc.wait(timeout=300) == 0
        assert b"3,000 records" in proc.stdout.read()
        proc.stdout.close()
    finally:
        os.close(controller)
    draws = [d for d in shown.split("\r") if d.strip()]
    assert any(f"{before_stall:,} events" in d and "/s" in d and "elapsed" in d for d in draws)
    assert shown.endswith("\r")  # the progress line is cleared at the end


def test_progress_shows_an_eta_for_files(small_stream: Path, tmp_path: Path) -> None:
    # Ten copies: long enough for the first redraw on any machine this suite runs on.
    big = tmp_path / "big.jsonl"
    big.write_bytes(small_stream.read_bytes() * 10)
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftmon", "replay", str(big)],
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=_env({"DRIFTMON_LOGGING__LEVEL": "warning"}),
        )
        os.close(terminal)
        shown = _read_terminal(controller).decode()
        assert proc.wait(timeout=300) == 0
    finally:
        os.close(controller)
    assert "ETA " in shown and "/s" in shown
