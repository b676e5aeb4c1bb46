"""The README's main-job command works: `driftmon demo` detects the silent upgrade, and
Ctrl-C on a terminal stops it cleanly."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_detects_the_silent_upgrade_and_exits_cleanly():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
    proc = subprocess.run(
        [sys.executable, "-m", "driftmon", "demo", "--duration", "120"],
        capture_output=True,
        timeout=240,
        env=env,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "metrics at http://127.0.0.1:" in out
    found = re.findall(r"detection at offset \d+: (\S+)/\S+ (\S+) \(", out)
    assert found, out[-2000:]
    # Only the upgraded endpoint drifts, and its format contract is among what fired.
    assert {endpoint for endpoint, _ in found} == {"sql-assistant"}
    assert "json_valid" in {feature for _, feature in found}
    # Nothing fired before the upgrade: every detection is at or after the partition
    # offset where sql-assistant's first upgraded event landed.
    where = re.search(
        r"the upgrade started at event 6,000 of the stream = partition \d+ offset (\d+)", out
    )
    assert where, out[-2000:]
    offsets = [int(o) for o in re.findall(r"detection at offset (\d+): sql-assistant/", out)]
    assert min(offsets) >= int(where.group(1)), (offsets, where.group(0))


def _children(pid: int) -> dict[int, str]:
    """pid → command name of the live child processes of ``pid``."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(stat.parent.name)] = comm
    return found


def _read_until(fd: int, out: bytearray, done: Callable[[], bool], timeout: float) -> bool:
    """Read the pty's master into ``out`` until ``done()``, EOF or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every slave end is closed
                return True
            if not chunk:
                return True
            out += chunk
    return True


def test_ctrl_c_on_a_terminal_stops_the_daemon_then_the_broker_and_prints_the_summary():
    """`make demo` on a terminal: Ctrl-C reaches the whole foreground process group. The
    demo is the pty's foreground process here, and the terminal driver turns the ^C
    written to the master into that SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
    env["TERM"] = "dumb"
    argv = [sys.executable, "-m", "driftmon", "demo", "--duration", "600"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: session leader with the pty as its controlling terminal
        os.execve(sys.executable, argv, env)
    out = bytearray()
    broker: dict[int, str] = {}
    try:
        consuming = re.compile(rb"^sql-assistant +[1-9][\d,]* ", re.M)
        assert _read_until(fd, out, lambda: bool(consuming.search(out)), timeout=180), out[
            -3000:
        ].decode(errors="replace")
        broker = {p: c for p, c in _children(pid).items() if "tansu" in c}
        assert broker, _children(pid)
        os.write(fd, b"\x03")
        _read_until(fd, out, lambda: False, timeout=180)
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    assert "ECONNREFUSED" not in text and "Connection refused" not in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert re.search(r"\d+ detections; the upgrade started at event 6,000", text), text[-3000:]
    # Stopped by the Ctrl-C, not by running out of events.
    produced = re.findall(r"([\d,]+)/12,000 events produced", text)
    assert produced and int(produced[-1].replace(",", "")) < 12_000, produced[-3:]
    for broker_pid in broker:
        assert not Path(f"/proc/{broker_pid}").exists(), f"broker {broker_pid} still running"


def test_the_demo_broker_does_not_outlive_a_killed_demo():
    """Outside the demo's process group, the broker would survive a SIGKILL of the demo
    (or of its group) unless it is told to die with its parent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftmon", "demo", "--duration", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert b"metrics at http://127.0.0.1:" in proc.stdout.readline()
        broker = [p for p, c in _children(proc.pid).items() if "tansu" in c]
        assert broker, _children(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{broker[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    outlived = Path(f"/proc/{broker[0]}").exists()
    if outlived:
        os.kill(broker[0], signal.SIGKILL)
    assert not outlived, f"broker {broker[0]} outlived the demo"
