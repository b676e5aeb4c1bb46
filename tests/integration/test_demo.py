"""The README's main-job command works: `driftmon demo` detects the silent upgrade."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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
