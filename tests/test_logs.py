"""Log set-up: one structured stream for driftmon's and the libraries' records."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from driftmon import logs

_SCRIPT = """
import logging, structlog
from driftmon import logs
logs.configure("info", "json")
structlog.get_logger("driftmon.daemon").info("checkpoint", partitions=1)
kafka = logging.getLogger("kafka.net.manager")
kafka.info("Attempting bootstrap to %s", "bootstrap-0")
kafka.error("Connection failed: %s", "[SSL: CERTIFICATE_VERIFY_FAILED]")
logging.getLogger("kafka.net.selector").warning("Task %r ran for %.3fs", "t", 0.2)
logging.getLogger("kafka.net.selector").warning("Selector closed")
"""


def test_library_warnings_join_driftmons_json_stream_without_the_noise() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True
    )
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert [(r["level"], r.get("logger"), r["event"]) for r in records] == [
        ("info", None, "checkpoint"),
        ("error", "kafka.net.manager", "Connection failed: [SSL: CERTIFICATE_VERIFY_FAILED]"),
        ("warning", "kafka.net.selector", "Selector closed"),
    ]
    assert all("timestamp" in r for r in records)


_FLOOD = """
import logging
from driftmon import logs
logs.configure("info", "json")
kafka = logging.getLogger("kafka.net.manager")
for i in range(50):
    kafka.error("Connection failed: %s", f"ECONNREFUSED {i}")
kafka.warning("Bootstrap %s not ready", "bootstrap-0")
"""


def test_a_flood_of_repeated_library_lines_is_written_once_per_template() -> None:
    out = subprocess.run([sys.executable, "-c", _FLOOD], capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in out.stderr.splitlines()]
    assert [r["event"] for r in records] == [
        "Connection failed: ECONNREFUSED 0",
        "Bootstrap bootstrap-0 not ready",
    ]


def test_the_line_after_the_window_counts_what_was_left_out() -> None:
    now = [0.0]
    limit = logs._RateLimitRepeats(window=30.0, clock=lambda: now[0])

    def record(msg: str, arg: object) -> logging.LogRecord:
        return logging.LogRecord("kafka.cluster", logging.WARNING, "f.py", 1, msg, (arg,), None)

    first = record("Metadata refresh: failed %s", 1)
    assert limit.filter(first) and not hasattr(first, "suppressed")
    for i in range(7):
        now[0] += 1.0
        assert not limit.filter(record("Metadata refresh: failed %s", i))
    assert limit.filter(record("another template %s", 0))  # counted per template
    now[0] = 31.0
    later = record("Metadata refresh: failed %s", 9)
    assert limit.filter(later)
    assert later.suppressed == 7  # type: ignore[attr-defined]
    now[0] = 62.0
    quiet = record("Metadata refresh: failed %s", 10)
    assert limit.filter(quiet) and not hasattr(quiet, "suppressed")
