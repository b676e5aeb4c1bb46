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

With ``--daemon-events N`` the same arms also run the whole daemon, end to end: a tansu
broker (pinned to another CPU than the arms) holds one topic per workload of N records (its
events cycled), and each arm's subprocess runs that tree's ``Daemon`` over the topic from
the beginning (a fresh consumer group, embeddings off, default settings otherwise). As in
the pipeline rounds, the detectors' threshold caches are warm: the worker first replays the
topic's records through a throwaway pipeline (a long-running daemon's keys share these
caches; one key alone would pay ~10 ms per continuous feature at each reference merge).
Timed from the batch that passes ``--daemon-warm`` of the records (the group join left
out) to the batch holding the last: wall-clock µs per record, the throughput a deployment
sees, Kafka consumption included.

    python benchmarks/versus_revision.py --rev 804d77c [--rounds 6] [--daemon-events 60000]

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


# Run in each tree's subprocess: that tree's Daemon over one topic, µs per record.
DAEMON_WORKER = """
import itertools, json, sys, tempfile, time, uuid
from driftmon.config import pipeline_config
from driftmon.core.pipeline import Pipeline
from driftmon.daemon import Daemon
from driftmon.settings import Settings
import driftmon

bootstrap, topic, total, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
events = sys.argv[5]
settings = Settings(
    kafka={
        "bootstrap_servers": [bootstrap],
        "topics": [topic],
        "group_id": "versus-" + uuid.uuid4().hex[:8],
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    },
    metrics={"host": "127.0.0.1", "port": 0},
    state={"dir": (state_dir := tempfile.TemporaryDirectory(prefix="driftmon-versus-")).name},
    logging={"level": "warning"},
    embeddings={"enabled": False},
)
# The topic's records through a throwaway pipeline first: the threshold caches then hold
# what this run's merges need, as in a long-running daemon whose keys share them.
with open(events) as handle:
    lines = handle.read().splitlines()
warmer = Pipeline(pipeline_config(settings))
for index, line in enumerate(itertools.islice(itertools.cycle(lines), total)):
    warmer.process(line, index)
del warmer
daemon = Daemon(settings)
process_batch = daemon.process_batch
seen, marks = [0], {}

def timed(batch):
    n = process_batch(batch)
    seen[0] += n
    if "first" not in marks and seen[0] >= warm:  # timing starts after this batch
        marks["first"] = (time.perf_counter(), time.process_time(), seen[0])
    if seen[0] >= total and "last" not in marks:
        marks["last"] = (time.perf_counter(), time.process_time(), seen[0])
        daemon.request_exit()
    return n

daemon.process_batch = timed
rc = daemon.run()
state_dir.cleanup()
if rc != 0 or "last" not in marks:
    raise SystemExit(f"daemon stopped at {seen[0]}/{total} records (exit {rc})")
(w0, c0, n0), (w1, c1, n1) = marks["first"], marks["last"]
print(json.dumps({
    "driftmon": driftmon.__file__,
    "records": n1 - n0,
    "wall_us": (w1 - w0) / (n1 - n0) * 1e6,
    "cpu_us": (c1 - c0) / (n1 - n0) * 1e6,
}))
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


def _run_worker(
    tree: Path, script: str, argv: list[str], cpu: str, env_extra: dict[str, str]
) -> dict[str, Any]:
    """``script`` in a fresh interpreter importing ``tree``'s driftmon, pinned to ``cpu``:
    the JSON object its last line prints."""
    env = {**os.environ, "PYTHONPATH": str(tree), **env_extra}
    command = [sys.executable, "-c", script, *argv]
    if cpu and shutil.which("taskset"):
        command = ["taskset", "-c", cpu, *command]
    done = subprocess.run(
        command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: worker failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["driftmon"].startswith(str(tree)):  # the wrong tree was imported
        raise RuntimeError(f"{tree}: imported {result['driftmon']}")
    return result


def run_arm(tree: Path, events: Path, passes: int, cpu: str, env_extra: dict[str, str]) -> float:
    return float(_run_worker(tree, WORKER, [str(events), str(passes)], cpu, env_extra)["warm"])


def run_daemon_arm(
    tree: Path,
    bootstrap: str,
    topic: str,
    events: Path,
    total: int,
    warm: int,
    cpu: str,
    env_extra: dict[str, str],
) -> dict[str, float]:
    argv = [bootstrap, topic, str(total), str(warm), str(events)]
    result = _run_worker(tree, DAEMON_WORKER, argv, cpu, env_extra)
    return {"wall_us": result["wall_us"], "cpu_us": result["cpu_us"]}


def fill_topics(bootstrap: str, files: dict[str, tuple[Path, int]], total: int) -> dict[str, str]:
    """One single-partition topic per workload holding ``total`` of its events (cycled),
    plus the daemon's own topics; returns the topic of each workload."""
    from itertools import cycle, islice

    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from driftmon.settings import KafkaSettings

    defaults = KafkaSettings()
    topics = {workload: f"versus-{workload}" for workload in files}
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()]
            + [
                NewTopic(defaults.dead_letter_topic, num_partitions=1, replication_factor=1),
                NewTopic(defaults.detections_topic, num_partitions=1, replication_factor=1),
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], acks=1, linger_ms=50, batch_size=1_048_576
    )
    try:
        for workload, (events, _) in files.items():
            lines = events.read_text().splitlines()
            futures = [
                producer.send(topics[workload], value=line.encode())
                for line in islice(cycle(lines), total)
            ]
            producer.flush()
            failed = sum(not f.succeeded() for f in futures)
            if failed:
                raise RuntimeError(f"{failed} of {total} sends to {topics[workload]} failed")
            log(f"{total} events of {workload} on topic {topics[workload]}")
    finally:
        producer.close()
    return topics


def _ratios(per_arm: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pairs = (("this", "rev"), ("this_attribution_off", "rev"), ("this", "this_attribution_off"))
    for a, b in pairs:
        ratios = [x / y for x, y in zip(per_arm[a], per_arm[b], strict=True)]
        out[f"ratio_{a}_{b}"] = {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        }
    return out


def daemon_rounds(
    args: argparse.Namespace,
    files: dict[str, tuple[Path, int]],
    arms: dict[str, tuple[Path, dict[str, str]]],
) -> dict[str, Any]:
    """The arms' daemons, side by side, over the same topics (see the module docstring)."""
    from driftmon.demo.tansu import EmbeddedBroker

    names = list(arms)
    wall: dict[str, dict[str, list[float]]] = {w: {n: [] for n in names} for w in files}
    cpu: dict[str, dict[str, list[float]]] = {w: {n: [] for n in names} for w in files}
    with tempfile.TemporaryDirectory(prefix="driftmon-versus-broker-") as tmp:
        broker = EmbeddedBroker(log_file=Path(tmp) / "broker.log").start()
        try:
            if args.broker_cpu and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(broker.pid, {int(c) for c in args.broker_cpu.split(",")})
            topics = fill_topics(broker.bootstrap, files, args.daemon_events)
            for rnd in range(args.rounds):
                for workload in files:
                    turn = rnd % len(names)
                    for name in names[turn:] + names[:turn]:
                        tree, env_extra = arms[name]
                        got = run_daemon_arm(
                            tree,
                            broker.bootstrap,
                            topics[workload],
                            files[workload][0],
                            args.daemon_events,
                            int(args.daemon_events * args.daemon_warm),
                            args.cpu,
                            env_extra,
                        )
                        wall[workload][name].append(round(got["wall_us"], 2))
                        cpu[workload][name].append(round(got["cpu_us"], 2))
                    log(
                        f"daemon round {rnd + 1}/{args.rounds} {workload}: "
                        + ", ".join(f"{n} {wall[workload][n][-1]}" for n in names)
                    )
        finally:
            broker.stop()
    return {
        workload: {
            "records": args.daemon_events,
            "timed_from_record": int(args.daemon_events * args.daemon_warm),
            "wall_us_per_record": wall[workload],
            "cpu_us_per_record": cpu[workload],
            **_ratios(wall[workload]),
            "cpu": _ratios(cpu[workload]),
        }
        for workload in files
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="the git revision to compare with")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--synthetic-events", type=int, default=100_000)
    ap.add_argument("--cpu", default="1", help="taskset CPU list ('' not to pin)")
    ap.add_argument(
        "--daemon-events", type=int, default=0, help="also the daemons, over topics this long"
    )
    ap.add_argument(
        "--daemon-warm",
        type=float,
        default=0.5,
        help="share of each daemon run's records read before timing starts",
    )
    ap.add_argument("--broker-cpu", default="0", help="the broker's CPUs ('' not to pin)")
    ap.add_argument("--skip-pipeline", action="store_true", help="only the daemon rounds")
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
            for rnd in range(0 if args.skip_pipeline else args.rounds):
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
            daemon = daemon_rounds(args, files, arms) if args.daemon_events > 0 else {}
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )
    result: dict[str, Any] = {"rev": rev, "rounds": args.rounds, "cpu": args.cpu}
    if not args.skip_pipeline:
        for workload, per_arm in us.items():
            result[workload] = {"us_per_event": per_arm, **_ratios(per_arm)}
    if daemon:
        result["daemon"] = {"broker_cpu": args.broker_cpu, **daemon}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
