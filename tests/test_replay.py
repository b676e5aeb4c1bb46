"""`driftmon replay` and the CLI, run as a user would: real files, real subprocesses."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driftmon.core.events import Rejection, parse_event
from driftmon.core.monitor import Detection
from driftmon.demo.synthetic import BAD_LINE_REASONS, Upgrade, generate
from driftmon.replay import (
    MAX_DETAIL_CHARS,
    MAX_REJECTED_EXAMPLES,
    ReplayResult,
    _Progress,
    replay,
    summary_table,
)
from driftmon.settings import Settings

UPGRADE_AT = 4000


def _write(path: Path, lines: list[str]) -> Path:
    # surrogatepass: invalid UTF-8 on disk, as a broken producer would write it.
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    return path


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = list(
        generate(
            8000,
            n_keys=4,
            seed=5,
            upgrade=Upgrade("sql-assistant", UPGRADE_AT),
            bad_line_every=97,
        )
    )
    # Garbage a JSON generator would never write: binary, huge nesting, NaN, blank lines.
    lines[10] = "\x00\xff garbage \ud800"
    lines[20] = "[" * 5000
    lines[30] = '{"endpoint": "a", "model": "m", "output": "x", "latency_ms": NaN}'
    lines.insert(40, "   ")
    return _write(tmp_path_factory.mktemp("replay") / "mixed.jsonl", lines)


def run_cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
    full_env["DRIFTMON_EMBEDDINGS__ENABLED"] = "false"  # tests/test_embedding.py covers them
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "driftmon", *args],
        input=stdin,
        capture_output=True,
        env=full_env,
        timeout=300,
    )


def test_garbage_is_counted_by_reason_and_the_file_is_read_to_the_end(mixed_file: Path):
    result = replay([str(mixed_file)], Settings(embeddings={"enabled": False}))
    assert result.records == 8000  # the blank line is not a record
    rejected = sum(result.rejected.values())
    assert result.accepted + rejected == 8000
    assert set(result.rejected) >= set(BAD_LINE_REASONS)
    assert result.rejected["not_json"] >= 3  # incl. binary, deep nesting, NaN


def test_report_follows_the_spec_and_indexes_count_rejected_lines(mixed_file: Path, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("replay", str(mixed_file), "--report", str(out))
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(out.read_text())
    assert {"events", "rejected", "keys", "detections"} <= set(report)
    assert report["events"] == 8000
    # events: the key's answers; feedback events are counted apart, not as answers.
    answers = sum(k["events"] for k in report["keys"])
    feedback = sum(k["feedback"] for k in report["keys"])
    assert feedback > 0  # the generator adds separate feedback events
    assert answers + feedback + sum(report["rejected"].values()) == 8000
    assert all(set(k) == {"endpoint", "model", "events", "feedback"} for k in report["keys"])
    dets = report["detections"]
    assert dets, "the silent upgrade must be detected"
    for d in dets:
        # SPEC §3's keys; later additions (units, ids) may come beside them.
        assert set(d) >= {
            "event_index",
            "endpoint",
            "model",
            "feature",
            "detector",
            "kind",
            "baseline",
            "current",
        }
        assert d["detector"] in ("page_hinkley", "adwin") and d["kind"] == "drift"
    # Every detection is on the upgraded endpoint, after the upgrade (line positions
    # include rejected lines, and the inserted blank line is not counted).
    assert {d["endpoint"] for d in dets} == {"sql-assistant"}
    assert min(d["event_index"] for d in dets) >= UPGRADE_AT
    out_text = proc.stdout.decode()
    assert "sql-assistant" in out_text and "page_hinkley" in out_text and "rejected:" in out_text


def test_replay_is_deterministic_and_reads_stdin(mixed_file: Path, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli("replay", str(mixed_file), "--report", str(a)).returncode == 0
    proc = run_cli("replay", "-", "--report", str(b), stdin=mixed_file.read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    from_file, from_stdin = json.loads(a.read_text()), json.loads(b.read_text())
    # Only the name of the input differs.
    assert {e["file"] for e in from_stdin["rejected_examples"]} == {"-"}
    for e in from_stdin["rejected_examples"]:
        e["file"] = str(mixed_file)
    assert from_file == from_stdin


def test_missing_file_and_bad_config_exit_2(tmp_path):
    proc = run_cli("replay", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2 and b"no such file" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("detectors:\n  warmup_events: 3\n")
    proc = run_cli("check-config", "--config", str(bad))
    assert proc.returncode == 2
    assert b"detectors.warmup_events" in proc.stderr
    proc = run_cli("check-config", env={"DRIFTMON_LIMITS__MAX_KEYS": "zero"})
    assert proc.returncode == 2 and b"limits.max_keys" in proc.stderr
    # An Alertmanager URL without a scheme is a configuration error, caught at load time
    # (before: accepted here, then a traceback and exit 1 from `driftmon run`).
    proc = run_cli("check-config", env={"DRIFTMON_ALERTMANAGER__URLS": '["am.example:9093"]'})
    assert proc.returncode == 2 and b"alertmanager.urls" in proc.stderr
    proc = run_cli("run", env={"DRIFTMON_ALERTMANAGER__URLS": '["am.example:9093"]'})
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr


def test_check_config_masks_secrets_and_applies_env(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  topics: [a, b]\nalertmanager:\n  urls: ['http://am:9093']\n")
    proc = run_cli(
        "check-config",
        "--config",
        str(cfg),
        env={
            "DRIFTMON_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "DRIFTMON_KAFKA__SASL_MECHANISM": "PLAIN",
            "DRIFTMON_KAFKA__SASL_USERNAME": "svc",
            "DRIFTMON_KAFKA__SASL_PASSWORD": "hunter2-secret",
            "DRIFTMON_ALERTMANAGER__BEARER_TOKEN": "tok-secret",
            "DRIFTMON_KAFKA__GROUP_ID": "from-env",
        },
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"secret" not in proc.stdout
    shown = json.loads(proc.stdout)
    assert shown["kafka"]["sasl_password"] == "***"
    assert shown["alertmanager"]["bearer_token"] == "***"
    assert shown["kafka"]["topics"] == ["a", "b"]
    assert shown["kafka"]["group_id"] == "from-env"


def test_default_config_file_is_valid():
    proc = run_cli(
        "check-config", "--config", str(Path(__file__).parents[1] / "config/driftmon.yaml")
    )
    assert proc.returncode == 0, proc.stderr.decode()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rejected_examples_point_at_the_rejected_lines(mixed_file: Path):
    result = replay([str(mixed_file)], Settings(embeddings={"enabled": False}))
    examples = result.rejected_examples
    assert len(examples) == MAX_REJECTED_EXAMPLES
    assert [e.line for e in examples] == sorted({e.line for e in examples})
    assert {11, 21, 31} <= {e.line for e in examples}  # binary, deep nesting, NaN
    lines = mixed_file.read_bytes().split(b"\n")
    for e in examples:
        assert e.file == str(mixed_file)
        raw = lines[e.line - 1]
        # The line really is rejected so: the inserted blank line is counted as a line.
        rejection = parse_event(raw)
        assert isinstance(rejection, Rejection)
        assert (e.reason, e.field, e.detail) == (
            rejection.reason,
            rejection.field,
            rejection.detail[:MAX_DETAIL_CHARS],
        )
        assert raw.decode("utf-8", "replace")[:40] not in e.detail
    table = summary_table(result)
    assert f"first 10 rejected records ({MAX_REJECTED_EXAMPLES} in the --report):" in table
    assert "line 21" in table


def test_progress_shows_rate_and_an_eta_from_bytes():
    now = [100.0]
    progress = _Progress(1_000, _Terminal(), clock=lambda: now[0])
    progress.start()
    now[0] += 2.0
    progress.note(done_bytes=250, records=3_000, detections=2)
    progress.draw()
    shown = progress.stream.getvalue()
    # A quarter of the bytes in 2 s: 6 s to go.
    assert "25.0%" in shown and "3,000 events" in shown and "1,500/s" in shown
    assert "2 detections" in shown and "ETA 0:06" in shown
    progress.close()
    assert progress.stream.getvalue().endswith(" " * progress.width + "\r")
    stdin = _Progress(None, _Terminal(), clock=lambda: now[0])
    stdin.start()
    now[0] += 75.0
    stdin.note(done_bytes=2_500_000, records=10, detections=0)
    stdin.draw()
    shown = stdin.stream.getvalue()
    assert "2.5 MB" in shown and "1:15 elapsed" in shown and "ETA" not in shown
    stdin.close()


def test_detection_table_shows_each_feature_in_its_own_unit():
    def detection(feature: str, baseline: float, current: float) -> Detection:
        return Detection(
            "sql", "m2", feature, "page_hinkley", baseline, current, 9.0, 5.0, 400, None
        )

    result = ReplayResult(
        records=10,
        accepted=10,
        detections=[detection("output_chars", 401.2, 12_527.0), detection("code_fence", 0.0, 16.5)],
    )
    table = summary_table(result)
    assert "401 characters" in table and "12,527 characters" in table
    assert "0.0 %" in table and "16.5 %" in table


def test_drifts_resolve_in_the_report_once_quiet_at_an_event_index(mixed_file: Path):
    settings = Settings(embeddings={"enabled": False})
    result = replay([str(mixed_file)], settings)
    report = result.report()
    resolutions = report["resolutions"]
    assert resolutions, "the upgrade's drifts are quiet again well before the end"
    assert all(set(r) == {"endpoint", "model", "feature", "event_index"} for r in resolutions)
    detected = {}
    for d in report["detections"]:
        detected.setdefault((d["endpoint"], d["model"], d["feature"]), []).append(d["event_index"])
    quiet = settings.detectors.warmup_events + settings.alertmanager.resolve_after_quiet_events
    for r in resolutions:
        onsets = detected[(r["endpoint"], r["model"], r["feature"])]
        # The last detection before it: at least warm-up + quiet events of the key later
        # (the key's events, so at least that many records), min_active_seconds ignored.
        last = max(i for i in onsets if i < r["event_index"])
        assert r["event_index"] - last >= quiet
    assert report["resolutions"] == replay([str(mixed_file)], settings).report()["resolutions"]
