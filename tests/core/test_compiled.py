"""The per-event core runs compiled (Cython) or as plain Python: same results either way.

CI builds the extensions (``DRIFTMON_REQUIRE_COMPILED=1`` makes their absence a failure
there); a checkout without a C compiler runs the plain source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import driftmon
from driftmon.core import COMPILED_MODULES, compiled_label, compiled_modules

CORE = Path(driftmon.__file__).parent / "core"

# Replays a generated stream with a silent upgrade and prints what the core did. With
# "save PATH" it also writes a snapshot at the half; with "load PATH" it restores one
# there and replays only the second half.
_RUN = """
import json, sys
from pathlib import Path
from driftmon.core import compiled_modules
from driftmon.config import pipeline_config
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings
from driftmon.demo.synthetic import Upgrade, generate

mode, path = (sys.argv[1], Path(sys.argv[2])) if len(sys.argv) > 2 else ("", None)
HALF = 8000
p = Pipeline(pipeline_config(Settings()))
found = []
lines = list(generate(16000, n_keys=3, seed=5, upgrade=Upgrade("sql-assistant", 10000),
                      bad_line_every=97))
for i, line in enumerate(lines):
    if i == HALF and mode == "save":
        path.write_bytes(p.monitor.snapshot())
    if i < HALF and mode == "load":
        continue
    if i == HALF and mode == "load":
        p.monitor.restore(path.read_bytes())
    for d in p.process(line, i).detections:
        found.append([d.event_index, d.endpoint, d.feature, d.detector, d.baseline,
                      d.current, d.statistic, d.threshold, d.key_events,
                      d.events_since_onset])
print(json.dumps({"compiled": compiled_modules(), "detections": found,
                  "rejected": dict(p.rejected), "accepted": p.accepted}))
"""


def _run(pythonpath: Path, cwd: Path, *args: str) -> dict:
    # cwd matters: ``python -c`` puts it first on sys.path, before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def _plain_copy(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    shutil.copytree(
        Path(driftmon.__file__).parent,
        root / "driftmon",
        ignore=shutil.ignore_patterns(*(f"*{s}" for s in EXTENSION_SUFFIXES), "*.c"),
    )
    return root


def test_compiled_and_plain_python_core_give_identical_results(tmp_path: Path) -> None:
    if compiled_label() != "true":
        pytest.skip(
            "extensions not built here: nothing to compare the plain source with; run make "
            "build (needs a C compiler: apt-get install gcc python3-dev)"
        )
    plain_root = _plain_copy(tmp_path)
    compiled = _run(Path(driftmon.__file__).parent.parent, tmp_path)
    plain = _run(plain_root, tmp_path)
    assert all(compiled["compiled"].values())
    assert not any(plain["compiled"].values())
    assert any(d[0] >= 10000 for d in compiled["detections"]), "the upgrade is detected"
    assert sum(compiled["rejected"].values()) > 0
    # Same events accepted and rejected, same detections at the same events with the
    # same values: the compiled module is the plain one, typed.
    assert plain["detections"] == compiled["detections"]
    assert plain["rejected"] == compiled["rejected"]
    assert plain["accepted"] == compiled["accepted"]


def test_a_snapshot_restores_across_the_compiled_and_the_plain_build(tmp_path: Path) -> None:
    """An image built without a compiler (or with one) resumes the other's checkpoints."""
    if compiled_label() != "true":
        pytest.skip(
            "extensions not built here; run make build (needs a C compiler: apt-get install "
            "gcc python3-dev)"
        )
    plain_root, here = _plain_copy(tmp_path), Path(driftmon.__file__).parent.parent
    full = _run(here, tmp_path, "save", str(tmp_path / "compiled.snap"))
    _run(plain_root, tmp_path, "save", str(tmp_path / "plain.snap"))
    second_half = [d for d in full["detections"] if d[0] >= 8000]
    assert second_half, "the upgrade after the snapshot is detected"
    plain_resumed = _run(plain_root, tmp_path, "load", str(tmp_path / "compiled.snap"))
    compiled_resumed = _run(here, tmp_path, "load", str(tmp_path / "plain.snap"))
    assert plain_resumed["detections"] == second_half
    assert compiled_resumed["detections"] == second_half


def test_built_extensions_are_not_older_than_their_source() -> None:
    """An extension built from an older .py would silently run old code."""
    stale = []
    for name in COMPILED_MODULES:
        source = CORE / f"{name}.py"
        for ext in CORE.glob(f"{name}.*"):
            if str(ext).endswith(tuple(EXTENSION_SUFFIXES)):
                inputs = [source, *CORE.glob(f"{name}.pxd")]
                newest_input = max(p.stat().st_mtime for p in inputs)
                if ext.stat().st_mtime < newest_input:
                    stale.append(ext.name)
    assert not stale, f"rebuild with `make build` (python setup.py build_ext --inplace): {stale}"


def test_compiled_core_is_required_where_ci_asks_for_it() -> None:
    if os.environ.get("DRIFTMON_REQUIRE_COMPILED") != "1":
        pytest.skip(
            "DRIFTMON_REQUIRE_COMPILED is not set (CI sets it to 1 to fail when the compiled "
            "core is missing)"
        )
    assert compiled_modules() == dict.fromkeys(COMPILED_MODULES, True)
