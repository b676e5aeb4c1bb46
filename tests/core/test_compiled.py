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

# Replays a generated stream with a silent upgrade and prints what the core did.
_RUN = """
import json, sys
from driftmon.core import compiled_modules
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings
from driftmon.synthetic import Upgrade, generate

p = Pipeline(Settings())
found = []
lines = list(generate(16000, n_keys=3, seed=5, upgrade=Upgrade("sql-assistant", 8000),
                      bad_line_every=97))
for i, line in enumerate(lines):
    for d in p.process(line, i).detections:
        found.append([d.event_index, d.endpoint, d.feature, d.detector, d.baseline,
                      d.current, d.statistic, d.threshold])
print(json.dumps({"compiled": compiled_modules(), "detections": found,
                  "rejected": dict(p.rejected), "accepted": p.accepted}))
"""


def _run(pythonpath: Path, cwd: Path) -> dict:
    # cwd matters: ``python -c`` puts it first on sys.path, before PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run(
        [sys.executable, "-c", _RUN], env=env, cwd=cwd, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def test_compiled_and_plain_python_core_give_identical_results(tmp_path: Path) -> None:
    if compiled_label() != "true":
        pytest.skip("extensions not built here: nothing to compare the plain source with")
    plain_root = tmp_path / "plain"
    shutil.copytree(
        Path(driftmon.__file__).parent,
        plain_root / "driftmon",
        ignore=shutil.ignore_patterns(*(f"*{s}" for s in EXTENSION_SUFFIXES), "*.c"),
    )
    compiled = _run(Path(driftmon.__file__).parent.parent, tmp_path)
    plain = _run(plain_root, tmp_path)
    assert all(compiled["compiled"].values())
    assert not any(plain["compiled"].values())
    assert compiled["detections"], "the upgrade should be detected"
    assert sum(compiled["rejected"].values()) > 0
    # Same events accepted and rejected, same detections at the same events with the
    # same values: the compiled module is the plain one, typed.
    assert plain["detections"] == compiled["detections"]
    assert plain["rejected"] == compiled["rejected"]
    assert plain["accepted"] == compiled["accepted"]


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
        pytest.skip("DRIFTMON_REQUIRE_COMPILED is not set")
    assert compiled_modules() == dict.fromkeys(COMPILED_MODULES, True)
