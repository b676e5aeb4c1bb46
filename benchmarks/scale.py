"""Scaling out on Kafka: events/s with 1, 2 and 3 replicas, the repartition stage's cost,
restore time and state size per key, and a projection to 100 partitions and 1 M keys.
Prints JSON (progress goes to stderr).

Parts (``--only restore,replicas,repartition`` runs some of them; all by default):

- ``restore`` (state in Kafka, ``state.backend: kafka``): a Monitor with ``--keys`` keys, each
  past its warm-up (``--events-per-key`` events of 12 features), is checkpointed to a
  compacted topic on an embedded tansu broker through ``KafkaCheckpointStore`` (chunked at
  ``state.chunk_bytes``, default 900 kB). A new store, as a replica taking the partition over
  would, then reads the state partition to its end, reassembles the snapshot and restores the
  Monitor; that is timed ``--repeat`` times (median), next to the same restore from a local
  checkpoint file. Figures: ``state_bytes_per_key``, ``restore_seconds_per_1000_keys`` (topic
  read + reassembly + decode + Monitor.restore) and ``rss_bytes_per_key`` (the process's RSS
  growth while the Monitor was built: approximate).
- ``replicas``: ``--events`` synthetic answers of ``--replica-keys`` keys (feedback lines left
  out, so that each record is one event) are produced keyed by endpoint to a 6-partition
  topic. Then R = 1, 2, 3 real ``python -m driftmon run`` processes start together in one
  consumer group with ``state.backend: kafka`` (embeddings off), and the run ends when the
  sum of their ``driftmon_events_accepted_total`` and ``driftmon_events_rejected_total``
  (scraped every 0.25 s) reaches the events produced. Two clocks: from the spawn (interpreter
  start, group join, rebalances and hand-offs included) and, for ``events_per_second``, from
  the first scrape at which every replica has counted events (the group's last rebalance and
  its restores are done) to the end. The daemons' CPU seconds in that window (/proc) give
  ``events_per_cpu_second``, the per-core figure. Each R runs ``--repeat`` times, interleaved.
- ``repartition``: ``benchmarks/repartition.py`` as a subprocess (``--repartition-events``, one
  round; it starts its own broker), its JSON embedded; the figure is ``stage_to_plain_ratio``.
- ``projection`` (always): ``--project-partitions`` partitions and ``--project-keys`` keys,
  from the figures measured in this run, each number given with its formula.

    python benchmarks/scale.py [--only restore,replicas,repartition] [--keys 1000 5000]
        [--events 60000] [--repeat 2] [--repartition-events 20000]

On 2 cores shared by the broker, the daemons, this script and other users' jobs, more
replicas cannot be faster: what the replica runs show is the per-core rate and what a group
of several replicas costs (joins, rebalances, state hand-offs), not a speed-up.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
import yaml
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon.checkpoint import Checkpoint, DirectoryCheckpointStore, KafkaCheckpointStore
from driftmon.config import monitor_config
from driftmon.core.monitor import Monitor
from driftmon.demo.synthetic import generate
from driftmon.demo.tansu import EmbeddedBroker, free_port
from driftmon.settings import KafkaSettings, Settings, StateSettings

TOPIC = "llm-outputs"
PARTITIONS = 6
SCRAPE_SECONDS = 0.25
STALL_SECONDS = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTS = ("restore", "replicas", "repartition")

FEATURES = (
    "output_chars", "output_tokens", "latency", "sentence_words", "paragraphs", "json_valid",
    "refusal", "preamble", "code_fence", "truncated", "schema_valid", "list_items",
)  # fmt: skip
BINARY = {"json_valid", "refusal", "preamble", "code_fence", "truncated", "schema_valid"}


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- restore: state size and restore time per key ----------------------------------------
def monitor(keys: int, events_per_key: int, seed: int = 0) -> Monitor:
    rng = random.Random(seed)
    config = monitor_config(Settings(embeddings={"enabled": False}, limits={"max_keys": keys}))
    m = Monitor(config, lambda _: len(FEATURES))
    for _ in range(events_per_key):
        for k in range(keys):
            features = {
                f: float(rng.random() < 0.1) if f in BINARY else rng.lognormvariate(3.0, 0.5)
                for f in FEATURES
            }
            m.update(f"endpoint-{k % 50}", f"model-{k}", features, None)
    return m


def timed_restore(load: Any, keys: int) -> float:
    start = time.perf_counter()
    ckpt = load()
    fresh = Monitor(
        monitor_config(Settings(embeddings={"enabled": False}, limits={"max_keys": keys})),
        lambda _: len(FEATURES),
    )
    fresh.restore(ckpt.state)
    elapsed = time.perf_counter() - start
    assert len(fresh) == keys
    return elapsed


def measure(broker: EmbeddedBroker, keys: int, events_per_key: int, repeat: int) -> dict[str, Any]:
    say(f"restore: building {keys} keys x {events_per_key} events")
    gc.collect()
    rss_before = rss_kib()
    built = monitor(keys, events_per_key)
    gc.collect()
    rss_bytes = (rss_kib() - rss_before) * 1024
    start = time.perf_counter()
    state = built.snapshot()  # what every checkpoint of the partition serialises
    snapshot_seconds = time.perf_counter() - start
    del built
    ckpt = Checkpoint("llm-outputs", 0, 123_456, state, time.time())
    config = {"bootstrap_servers": [broker.bootstrap]}
    topic = f"bench.state.{keys}"

    def store() -> KafkaCheckpointStore:
        s = KafkaCheckpointStore(config, topic=topic, group="bench", chunk_bytes=900_000)
        s.connect()
        return s

    writer = store()
    start = time.perf_counter()
    writer.save(ckpt)
    write_seconds = time.perf_counter() - start
    writer.close()
    kafka_times = []
    for _ in range(repeat):
        reader = store()  # a replica that has never seen the partition
        kafka_times.append(timed_restore(lambda r=reader: r.load("llm-outputs", 0), keys))
        reader.close()
    with tempfile.TemporaryDirectory() as tmp:
        files = DirectoryCheckpointStore(Path(tmp))
        files.save(ckpt)
        file_times = [
            timed_restore(lambda: files.load("llm-outputs", 0), keys) for _ in range(repeat)
        ]
    kafka_s, file_s = statistics.median(kafka_times), statistics.median(file_times)
    return {
        "keys": keys,
        "events_per_key": events_per_key,
        "state_bytes": len(state),
        "state_bytes_per_key": round(len(state) / keys),
        "rss_bytes_per_key": round(rss_bytes / keys),
        "chunks": -(-len(state) // 900_000),
        "snapshot_seconds": round(snapshot_seconds, 3),
        "write_seconds": round(write_seconds, 3),
        "restore_seconds_kafka": round(kafka_s, 3),
        "restore_seconds_per_1000_keys_kafka": round(kafka_s / keys * 1000, 3),
        "restore_seconds_file": round(file_s, 3),
        "restore_seconds_per_1000_keys_file": round(file_s / keys * 1000, 3),
    }


# -- replicas: events/s of 1, 2 and 3 daemons in one group -------------------------------
def answers(n: int, keys: int) -> tuple[list[bytes], list[bytes]]:
    """``n`` synthetic answers and their endpoints. Feedback lines are left out: each record
    is then one event, accepted or rejected, and the daemons' event counters reach ``n``."""
    values: list[bytes] = []
    endpoints: list[bytes] = []
    for line in generate(sys.maxsize, n_keys=keys, seed=1):
        event = json.loads(line)
        if event.get("kind") == "feedback":
            continue
        values.append(line.encode())
        endpoints.append(event["endpoint"].encode())
        if len(values) == n:
            break
    return values, endpoints


def produce_input(bootstrap: str, values: list[bytes], keys: list[bytes]) -> float:
    defaults = KafkaSettings()
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        admin.create_topics(
            [NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)]
            + [
                NewTopic(name, num_partitions=1, replication_factor=1)
                for name in (
                    defaults.dead_letter_topic,
                    defaults.detections_topic,
                    defaults.transitions_topic,
                )
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], acks=1, linger_ms=50, batch_size=1_048_576
    )
    start = time.perf_counter()
    futures = [producer.send(TOPIC, value=v, key=k) for v, k in zip(values, keys, strict=True)]
    producer.flush()
    seconds = time.perf_counter() - start
    producer.close()
    failed = sum(not f.succeeded() for f in futures)
    if failed:
        raise RuntimeError(f"{failed} of {len(futures)} sends failed")
    return seconds


class Replica:
    """``python -m driftmon run`` as a subprocess, with its own config file, log and port."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.port = free_port()
        # No per-key detail series: the 0.25 s scrapes of this benchmark then cost little.
        settings["metrics"] = {"host": "127.0.0.1", "port": self.port, "max_detail_keys": 0}
        self.config = workdir / "driftmon.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "driftmon", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"replica exited with {self.proc.returncode}:\n{tail}")

    def events(self) -> float | None:
        """Accepted plus rejected events so far; None while /metrics does not answer."""
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=15) as resp:
                body = resp.read().decode()
        except OSError:
            return None
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(
                ("driftmon_events_accepted_total ", "driftmon_events_rejected_total{")
            )
        )

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the ordered shutdown checkpoints to the state topic); SIGKILL after
        ``timeout``. The exit code, None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def hand_offs(self) -> dict[str, Any]:
        """From the log: partitions restored from the state topic (warm), started without a
        snapshot (cold), and the longest wait from assignment to restore."""
        assigned: dict[int, datetime] = {}
        warm = cold = 0
        longest = 0.0
        for line in self.log.read_text(errors="replace").splitlines():
            if '"partition' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            at = datetime.fromisoformat(entry["timestamp"])
            if entry.get("event") == "partition assigned":
                assigned[entry["partition"]] = at
            elif entry.get("event") == "partition restored":
                if entry.get("restored_offset") is None:
                    cold += 1
                else:
                    warm += 1
                since = assigned.pop(entry["partition"], None)
                if since is not None:
                    longest = max(longest, (at - since).total_seconds())
        return {"warm_restores": warm, "cold_starts": cold, "assign_to_restore_max_s": longest}


def replica_settings(bootstrap: str, group: str, state_topic: str, workdir: Path) -> Any:
    return {
        "kafka": {
            "bootstrap_servers": [bootstrap],
            "topics": [TOPIC],
            "group_id": group,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "state": {"backend": "kafka", "topic": state_topic, "dir": str(workdir / "state")},
        "logging": {"level": "info", "format": "json"},  # assignments and restores
        "embeddings": {"enabled": False},
    }


def run_group(
    broker: EmbeddedBroker, n: int, size: int, run: int, tmp: Path, *, scale_out: bool = False
) -> dict[str, Any]:
    """Start ``size`` replicas together in a new group; wait until they counted ``n`` events.
    ``scale_out``: start one, and the others once it has counted a quarter of the events, so
    that its partitions are handed over through the state topic."""
    group = f"bench-scale-{size}x-{run}{'-scale-out' if scale_out else ''}"
    replicas = [
        Replica(
            tmp / group / str(i),
            replica_settings(broker.bootstrap, group, f"bench.state.{size}x-{run}", tmp / group),
        )
        for i in range(size)
    ]
    seen = [0.0] * size
    all_at: float | None = None
    at_all: dict[str, Any] = {}
    last_change, last_total = time.monotonic(), -1.0
    # The longest time without progress once events flow: a rebalance stops the group.
    progress, longest_pause = (0.0, 0.0), 0.0
    waiting = replicas[1:] if scale_out else []
    joined: tuple[float, float] | None = None  # when the late replicas started, events then
    spawned = time.perf_counter()
    try:
        for r in replicas:
            if r not in waiting:
                r.start()
        while True:
            time.sleep(SCRAPE_SECONDS)
            if waiting and sum(seen) >= n / 4:
                joined = (time.perf_counter(), sum(seen))
                for r in waiting:
                    r.start()
                waiting = []
            for i, r in enumerate(replicas):
                if r.proc is None:
                    continue
                r.check_alive()
                counted = r.events()
                seen[i] = seen[i] if counted is None else counted
            now = time.perf_counter()
            total = sum(seen)
            if total > progress[1]:
                if progress[1] > 0:
                    longest_pause = max(longest_pause, now - progress[0])
                progress = (now, total)
            if all_at is None and all(seen):
                all_at = now
                at_all = {
                    "events": total,
                    "cpu": sum(cpu_seconds(r.pid) for r in replicas),
                    "broker_cpu": cpu_seconds(broker.pid),
                }
            if total >= n:
                break
            if total != last_total:
                last_change, last_total = time.monotonic(), total
            elif time.monotonic() - last_change > STALL_SECONDS:
                raise RuntimeError(f"{size} replicas stalled at {total}/{n} events")
        end = now
        cpu_end = sum(cpu_seconds(r.pid) for r in replicas)
        broker_cpu_end = cpu_seconds(broker.pid)
        cpu_by_replica = [round(cpu_seconds(r.pid), 2) for r in replicas]
    finally:
        exits = [r.stop() for r in replicas]
    result: dict[str, Any] = {
        "replicas": size,
        "run": run,
        "seconds_from_spawn": round(end - spawned, 2),
        "events_per_second_from_spawn": round(n / (end - spawned)),
        "events_by_replica": [round(s) for s in seen],
        "events_counted": round(sum(seen)),  # above the events produced: records read twice
        "longest_pause_seconds": round(longest_pause, 2),
        "cpu_seconds_by_replica": cpu_by_replica,
        "exit_codes": exits,
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "hand_offs": [r.hand_offs() for r in replicas],
    }
    if joined is not None and all_at is not None:
        result["scale_out"] = {
            "events_when_joining": round(joined[1]),
            "seconds_join_to_all_processing": round(all_at - joined[0], 2),
            "events_counted_minus_produced": round(sum(seen)) - n,
        }
    if all_at is not None and end > all_at:
        events = sum(seen) - at_all["events"]
        cpu = cpu_end - at_all["cpu"]
        result.update(
            {
                "seconds_to_all_processing": round(all_at - spawned, 2),
                "window_seconds": round(end - all_at, 2),
                "window_events": round(events),
                "events_per_second": round(events / (end - all_at)),
                "events_per_second_per_replica": round(events / (end - all_at) / size),
                "daemon_cpu_seconds_in_window": round(cpu, 2),
                "events_per_cpu_second": round(events / cpu) if cpu > 0 else None,
                "broker_cpu_seconds_in_window": round(broker_cpu_end - at_all["broker_cpu"], 2),
            }
        )
    return result


def measure_replicas(broker: EmbeddedBroker, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    say(f"replicas: generating {args.events} answers of {args.replica_keys} keys")
    values, keys = answers(args.events, args.replica_keys)
    produce_seconds = produce_input(broker.bootstrap, values, keys)
    del values, keys
    runs: list[dict[str, Any]] = []
    for run in range(args.repeat):
        for size in (1, 2, 3):
            say(f"replicas: run {run + 1}/{args.repeat}, {size} replica(s)")
            runs.append(run_group(broker, args.events, size, run, tmp))
            say(f"replicas: {json.dumps(runs[-1])}")
    say("replicas: scale-out, 1 then 2 more")
    scale_out = run_group(broker, args.events, 3, 0, tmp, scale_out=True)
    say(f"replicas: {json.dumps(scale_out)}")

    def median(size: int, name: str) -> float | None:
        found = [r[name] for r in runs if r["replicas"] == size and r.get(name) is not None]
        return round(statistics.median(found)) if found else None

    fields = (
        "events_per_second",
        "events_per_second_per_replica",
        "events_per_cpu_second",
        "events_per_second_from_spawn",
        "seconds_from_spawn",
        "seconds_to_all_processing",
    )
    return {
        "note": (
            f"{os.cpu_count()} cores, shared by the broker, the daemons, this script and "
            "other users' jobs: more replicas cannot be faster here. events_per_second is "
            "timed from the first scrape at which every replica had counted events (the "
            "last rebalance and its restores done) to the end, to +-0.25 s; "
            "events_per_cpu_second divides the same events by the daemons' CPU seconds in "
            "that window: the per-core rate. *_from_spawn includes interpreter start, group "
            "join, rebalances and hand-offs. scale_out_1_to_3 starts one replica and two "
            "more once it has counted a quarter of the events: its partitions move warm "
            "through the state topic (hand_offs: warm_restores). longest_pause_seconds: the "
            "longest time the group's event count stood still once events flowed (a "
            "rebalance stops every member), to +-0.25 s."
        ),
        "topic_partitions": PARTITIONS,
        "events": args.events,
        "keys": args.replica_keys,
        "produce_seconds": round(produce_seconds, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "median": {str(s): {f: median(s, f) for f in fields} for s in (1, 2, 3)},
        "runs": runs,
        "scale_out_1_to_3": scale_out,
    }


# -- repartition: the stage's cost, from benchmarks/repartition.py -----------------------
def measure_repartition(events: int) -> dict[str, Any]:
    args = ["--events", str(events), "--repeats", "1"]
    say(f"repartition: python benchmarks/repartition.py {' '.join(args)}")
    script = Path(__file__).with_name("repartition.py")
    out = subprocess.run(
        [sys.executable, str(script), *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    # Its JSON is the indented object at the end; a warning logged before it is one line.
    result: dict[str, Any] = json.loads(out[out.rfind("\n{\n") + 1 :] if "\n{\n" in out else out)
    formats = [f for f in ("native", "otlp_json") if f in result]
    return {
        "command": f"python benchmarks/repartition.py {' '.join(args)}",
        "stage_to_plain_ratio": {f: result[f]["stage_to_plain_ratio"] for f in formats},
        "stage_to_forward_ratio": {f: result[f]["stage_to_forward_ratio"] for f in formats},
        "stage_events_per_second": {
            f: result[f]["median_events_per_second"]["stage"] for f in formats
        },
        "result": result,
    }


# -- projection ----------------------------------------------------------------------------
def project(value: float, formula: str, unit: str) -> dict[str, Any]:
    shown = round(value, 2) if value < 100 else round(value)
    return {"projection": shown, "unit": unit, "formula": formula}


def projection(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every figure a projection from this run's measurements, with its formula."""
    parts, keys, replicas = args.project_partitions, args.project_keys, args.project_replicas
    per_partition = keys / parts
    out: dict[str, Any] = {
        "note": (
            "Projections, not measurements: linear extrapolations of the figures measured "
            "above, each with its formula. Memory and restore assume the keys are spread "
            "evenly over the partitions and every key is past its warm-up."
        ),
        "partitions": parts,
        "keys": keys,
        "replicas": replicas,
        "keys_per_partition": round(per_partition),
    }
    restore = results.get("state_topic")
    if restore:
        big = max(restore, key=lambda r: r["keys"])
        bpk = big["state_bytes_per_key"]
        # Built after the smaller Monitors were freed, a larger one reuses their memory:
        # the largest growth per key is the one to project.
        rss = max(r["rss_bytes_per_key"] for r in restore)
        per_1000 = big["restore_seconds_per_1000_keys_kafka"]
        per_part_s = per_1000 * per_partition / 1000
        share = math.ceil(parts / replicas)
        out |= {
            "state_topic_gb": project(
                bpk * keys / 1e9,
                f"state_bytes_per_key {bpk} x {keys} keys / 1e9; the newest snapshot of each "
                "partition after compaction, up to twice that before it runs",
                "GB",
            ),
            "snapshot_mb_per_partition": project(
                bpk * per_partition / 1e6,
                f"state_bytes_per_key {bpk} x {per_partition:.0f} keys per partition / 1e6, "
                f"written as {math.ceil(bpk * per_partition / 900_000)} chunks of 900 kB",
                "MB",
            ),
            "state_memory_gb_per_replica": project(
                bpk * keys / replicas / 1e9,
                f"state_bytes_per_key {bpk} x {keys} keys / {replicas} replicas / 1e9 (the "
                "serialised state: a lower bound)",
                "GB",
            ),
            "rss_gb_per_replica": project(
                rss * keys / replicas / 1e9,
                f"rss_bytes_per_key {rss} x {keys} keys / {replicas} replicas / 1e9, plus the "
                "~80 MB a daemon takes before any key (benchmarks/daemon.py)",
                "GB",
            ),
            "restore_seconds_per_partition": project(
                per_part_s,
                f"restore_seconds_per_1000_keys_kafka {per_1000} x {per_partition:.0f} / 1000, "
                "with the state partition holding this snapshot only (as measured)",
                "s",
            ),
            "rebalance_note": (
                "kafka-python's default assignors are eager: every rebalance (a replica "
                "joining, leaving, each step of a rolling restart) revokes every partition of "
                f"every replica, so each replica checkpoints and restores all its {share} "
                "partitions (the takeover figures below with k = that), not only the moved ones"
            ),
        }
        every = StateSettings().checkpoint_every_seconds
        save_s = (big["snapshot_seconds"] + big["write_seconds"]) / big["keys"] * per_partition
        out |= {
            "checkpoint_seconds_per_partition": project(
                save_s,
                f"(snapshot_seconds {big['snapshot_seconds']} + write_seconds "
                f"{big['write_seconds']}) / {big['keys']} keys x {per_partition:.0f}",
                "s",
            ),
            "checkpoint_share_of_a_core_per_replica": project(
                save_s * share / every,
                f"{save_s:.2f} s x {share} partitions / checkpoint_every_seconds {every:.0f} "
                "(every partition with new events is checkpointed each interval; above 1: "
                "checkpoints alone outrun the interval)",
                "cores",
            ),
            "state_topic_write_mb_per_second": project(
                bpk * keys / every / 1e6,
                f"state_bytes_per_key {bpk} x {keys} / checkpoint_every_seconds {every:.0f} / "
                "1e6, for the whole group, every partition busy",
                "MB/s",
            ),
        }
        read_s = big["restore_seconds_kafka"] - big["restore_seconds_file"]
        if read_s > 0:
            out |= takeover(
                args, big, bpk, read_s, [1, max(1, share // max(1, replicas - 1)), share]
            )
    by_size = results.get("replicas", {}).get("median", {})
    per_cpu = by_size.get("1", {}).get("events_per_cpu_second")
    if per_cpu:
        rate = args.project_rate
        out["replicas_for_rate"] = project(
            math.ceil(rate / per_cpu),
            f"ceil({rate} events/s / {per_cpu} events per CPU-second of one replica), one "
            f"core each, at most {parts} (the partitions)",
            "replicas",
        )
        stage = results.get("repartition", {}).get("stage_events_per_second", {}).get("native")
        if stage:
            both = 1 / (1 / stage + 1 / per_cpu)
            out["replicas_for_rate_with_repartition"] = project(
                math.ceil(rate / both),
                f"ceil({rate} / (1 / (1/{stage} stage + 1/{per_cpu} monitor))): stage and "
                "monitor share one interpreter; one-event messages (native); the stage's "
                "rate is wall-clock on this shared machine",
                "replicas",
            )
    return out


def takeover(
    args: argparse.Namespace, big: dict[str, Any], bpk: int, read_s: float, ks: list[int]
) -> dict[str, Any]:
    """A replica taking over k partitions reads every state partition their snapshots hash
    to, from its beginning to its end, then decodes and restores each snapshot."""
    parts, keys = args.project_partitions, args.project_keys
    mb_s = big["state_bytes"] / 1e6 / read_s
    decode_s = big["restore_seconds_per_1000_keys_file"] * keys / parts / 1000
    out: dict[str, Any] = {
        "state_read_mb_per_second": project(
            mb_s,
            f"state_bytes {big['state_bytes']} / 1e6 / (restore_seconds_kafka - "
            f"restore_seconds_file = {read_s:.3f} s): the state-topic read and reassembly",
            "MB/s",
        ),
        "decode_and_restore_seconds_per_partition": project(
            decode_s,
            f"restore_seconds_per_1000_keys_file {big['restore_seconds_per_1000_keys_file']} "
            f"x {keys / parts:.0f} / 1000",
            "s",
        ),
    }
    for state_parts in sorted({args.project_state_partitions, parts}):
        stored_gb = bpk * keys / state_parts / 1e9
        rows: dict[str, Any] = {
            "state_partition_gb": project(
                stored_gb,
                f"{bpk} x {keys} / {state_parts} / 1e9, after compaction (more before it)",
                "GB",
            )
        }
        for k in sorted(set(ks)):
            touched = state_parts * (1 - (1 - 1 / state_parts) ** k)
            read = touched * stored_gb * 1000 / mb_s
            row = project(
                read + k * decode_s,
                f"read {touched:.1f} state partitions (expected, of {state_parts}, for {k} "
                f"snapshots hashed at random) x {stored_gb:.2f} GB / {mb_s:.0f} MB/s = "
                f"{read:.0f} s, + {k} x {decode_s:.2f} s decode and restore; plus the "
                "session timeout after a crash",
                "s",
            )
            # KafkaCheckpointStore gives up reading the state topic after 120 s (exit 2).
            row["state_read_over_120_s_limit"] = read > 120
            rows[f"takeover_{k}_partitions"] = row
        out[f"with_state_topic_partitions_{state_parts}"] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}"
    )
    parser.add_argument("--keys", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--events-per-key", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=2, help="restores and replica runs")
    parser.add_argument("--events", type=int, default=100_000, help="replicas: events produced")
    parser.add_argument("--replica-keys", type=int, default=100)
    parser.add_argument("--repartition-events", type=int, default=40_000)
    parser.add_argument("--project-partitions", type=int, default=100)
    parser.add_argument("--project-keys", type=int, default=1_000_000)
    parser.add_argument("--project-replicas", type=int, default=10)
    parser.add_argument("--project-rate", type=int, default=50_000, help="events/s")
    parser.add_argument(
        "--project-state-partitions", type=int, default=6, help="state.topic_partitions"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if not only <= set(PARTS):
        parser.error(f"--only takes {','.join(PARTS)}, not {','.join(sorted(only - set(PARTS)))}")
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr)
    )  # JSON only on stdout
    results: dict[str, Any] = {
        "benchmark": "scale",
        "nproc": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if only & {"restore", "replicas"}:
        with (
            tempfile.TemporaryDirectory() as tmp,
            EmbeddedBroker(log_file=Path(tmp) / "b.log") as b,
        ):
            if "restore" in only:
                results["state_topic"] = [
                    measure(b, n, args.events_per_key, args.repeat) for n in args.keys
                ]
            if "replicas" in only:
                results["replicas"] = measure_replicas(b, args, Path(tmp))
    if "repartition" in only:
        results["repartition"] = measure_repartition(args.repartition_events)
    results["projection"] = projection(results, args)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
