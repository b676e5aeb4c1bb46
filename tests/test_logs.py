"""Log set-up: one structured stream for driftmon's and the libraries' records."""

from __future__ import annotations

import json
import subprocess
import sys

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
