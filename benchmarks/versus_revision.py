"""Per-event cost of this tree against another git revision, both compiled, side by side.

Issue 16's cost line compares with the code before it ("within 15 % of today"), which
``benchmarks/attribution_cost.py`` cannot: it swaps only the input model. This builds
``--rev`` in a temporary git worktree (``setup.py build_ext --inplace``, the compiled core
of that revision) and replays the same event files through ``Pipeline.process`` of each
tree in turn, every tree in a fresh subprocess pinned to one CPU (``--cpu``), the order
rotating each round. Per run: one cold pass (the threshold caches fill), then ``--passes``
warm passes, each with a fresh pipeline; the figure is the median warm pass's CPU time per
event. Arms:

* ``rev``: the other revision, its default settings (embeddings off);
* ``this``: this tree, default settings (attribution on: the events carry prompt
  information);
* ``this_attribution_off``: this tree with ``DRIFTMON_ATTRIBUTION__ENABLED=false``.

Workloads: ``alpaca`` (AlpacaEval answers of gpt4_0314 with their instruction as
``input``, 6 000 events of one key: ``benchmarks/attribution_cost.py``'s) and
``synthetic`` (``driftmon.demo.synthetic``, 100 keys, ``--synthetic-events``; carries
``input_tokens`` and ``prompt_version``, no text). Prints JSON: µs per event per round and
arm, and per pair of arms the ratio per round (median, range).

    python benchmarks/versus_revision.py --rev 804d77c [--rounds 6]

804d77c is the last commit before issue 16's work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Run in each tree's subprocess (its driftmon first on sys.path): µs of CPU per event.
WORKER = """
import json, statistics, sys, time
from driftmon.config import pipeline_config
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings
import driftmon

path, passes = sys.argv[1], int(sys.argv[2])
with open(path) as handle:
    lines = handle.read().splitlines()
config = pipeline_config(Settings(embeddings={"enabled": False}, logging={"level": "warning"}))
spent = []
for _ in range(passes + 1):
    pipeline = Pipeline(config)
    t0 = time.process_time()
    for index, line in enumerate(lines):
        pipeline.process(line, index)
    spent.append((time.process_time() - t0) / len(lines) * 1e6)
warm = statistics.median(spent[1:])
print(json.dumps({"driftmon": driftmon.__file__, "cold": spent[0], "warm": warm}))
"""


def log(message: str) -> None:
    print(f"[versus_revision] {message}", file=sys.stderr, flush=True)


def build_revision(rev: str, into: Path) -> None:
    """``rev`` checked out at ``into`` (a detached worktree) with its extensions built."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(into), rev],
        check=True,
        capture_output=True,
    )
    log(f"building {rev} in {into}")
    subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
        cwd=into,
        check=True,
        capture_output=True,
    )


def workloads(synthetic_events: int, into: Path) -> dict[str, tuple[Path, int]]:
    """Event files to replay and the warm passes each gets."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from attribution_cost import DATA, alpaca_lines, synthetic_lines

    out: dict[str, tuple[Path, int]] = {}
    if DATA.is_dir():
        out["alpaca"] = (into / "alpaca.jsonl", 8)
        out["alpaca"][0].write_text("\n".join(alpaca_lines(DATA)) + "\n")
    else:
        log(f"shared data not found at {DATA}: the alpaca workload is left out")
    out["synthetic"] = (into / "synthetic.jsonl", 2)
    out["synthetic"][0].write_text("\n".join(synthetic_lines(synthetic_events)) + "\n")
    return out


def run_arm(tree: Path, events: Path, passes: int, cpu: str, env_extra: dict[str, str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), **env_extra}
    command = [sys.executable, "-c", WORKER, str(events), str(passes)]
    if cpu and shutil.which("taskset"):
        command = ["taskset", "-c", cpu, *command]
    done = subprocess.run(
        command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["driftmon"].startswith(str(tree)):  # the wrong tree was imported
        raise RuntimeError(f"{tree}: imported {result['driftmon']}")
    return float(result["warm"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="the git revision to compare with")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--synthetic-events", type=int, default=100_000)
    ap.add_argument("--cpu", default="1", help="taskset CPU list ('' not to pin)")
    args = ap.parse_args()
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="driftmon-versus-") as tmp:
        base = Path(tmp) / "rev"
        try:
            build_revision(rev, base)
            files = workloads(args.synthetic_events, Path(tmp))
            arms: dict[str, tuple[Path, dict[str, str]]] = {
                "rev": (base, {}),
                "this": (ROOT, {}),
                "this_attribution_off": (ROOT, {"DRIFTMON_ATTRIBUTION__ENABLED": "false"}),
            }
            names = list(arms)
            us: dict[str, dict[str, list[float]]] = {w: {n: [] for n in names} for w in files}
            for rnd in range(args.rounds):
                for workload, (events, passes) in files.items():
                    turn = rnd % len(names)
                    for name in names[turn:] + names[:turn]:
                        tree, env_extra = arms[name]
                        us[workload][name].append(
                            round(run_arm(tree, events, passes, args.cpu, env_extra), 2)
                        )
                    log(
                        f"round {rnd + 1}/{args.rounds} {workload}: "
                        + ", ".join(f"{n} {us[workload][n][-1]}" for n in names)
                    )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )
    result: dict[str, Any] = {"rev": rev, "rounds": args.rounds, "cpu": args.cpu}
    pairs = (("this", "rev"), ("this_attribution_off", "rev"), ("this", "this_attribution_off"))
    for workload, per_arm in us.items():
        row: dict[str, Any] = {"us_per_event": per_arm}
        for a, b in pairs:
            ratios = [x / y for x, y in zip(per_arm[a], per_arm[b], strict=True)]
            row[f"ratio_{a}_{b}"] = {
                "median": round(statistics.median(ratios), 3),
                "min": round(min(ratios), 3),
                "max": round(max(ratios), 3),
            }
        result[workload] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
