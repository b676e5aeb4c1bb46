"""The daemon end to end against an embedded broker, beside plain kafka-python, and the
memory of many active keys. Prints JSON (progress goes to stderr).

1. Starts a tansu broker (memory storage), creates the input topic and produces
   ``--events`` synthetic events (100 keys, keyed by endpoint) with a fast producer.
2. Reads the whole topic with a plain, group-less kafka-python consumer that only touches
   each value (the baseline), then runs the real ``Daemon`` in-process on the same topic
   from the beginning (embeddings off) until every record is processed. Both consumers
   use the same fetch settings and ``max_poll_records`` and run pinned to one CPU; the
   broker is pinned to another. Rates are timed from the first batch to the last record,
   so the ~3 s group join is not counted; ``daemon_to_plain_ratio`` is the figure that
   survives a noisy machine. With ``--embeddings`` the daemon runs a third time with
   embeddings on (default sampling and budget, one torch thread), its embedding worker
   process pinned to the other CPU (the broker's): ``embeddings_on_to_off_ratio``.
3. In a fresh subprocess, feeds a core Pipeline ``--events-per-key`` events for each of
   ``--keys`` keys (round-robin, so all keys are active at once) until every feature
   stream of every key is past its warm-up (each event gets inline feedback so that the
   feedback stream warms up too), and reports RSS and snapshot bytes per key, and how long
   one snapshot (what a checkpoint writes) and its restore take. Then, on that state, times
   the daemon's per-key housekeeping: ``Daemon.refresh_metrics``, a /metrics scrape and
   ``Daemon.checkpoint`` (stub consumer and producer, no broker).

    python benchmarks/daemon.py [--events 500000] [--partitions 1] [--keys 10000] [--embeddings]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import ctypes.util
import gc
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import generate_latest

from driftmon import logs
from driftmon.config import pipeline_config
from driftmon.core.monitor import Detection
from driftmon.core.pipeline import Pipeline
from driftmon.daemon import Daemon, PartitionState
from driftmon.demo.synthetic import generate
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.settings import KafkaSettings, Settings

TOPIC = "llm-outputs"
N_KEYS = 100  # keys in the Kafka stream
SEED = 1
STALL_SECONDS = 120.0  # give up when no record arrives for this long

# The daemon's consumer fetch settings (driftmon.kafka.make_consumer), reused by the baseline.
_MAX_MESSAGE_BYTES = KafkaSettings().max_message_bytes
FETCH_MAX_BYTES = max(52_428_800, _MAX_MESSAGE_BYTES * 4)
MAX_PARTITION_FETCH_BYTES = max(1_048_576, _MAX_MESSAGE_BYTES * 2)


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM …) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pin_process(cpus: set[int]) -> None:
    """Pin every existing thread of this process; threads started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


# -- 1. produce ---------------------------------------------------------------------------
def make_events(n: int) -> tuple[list[bytes], list[bytes]]:
    """Values and keys (the endpoint) of ``n`` synthetic events."""
    values: list[bytes] = []
    keys: list[bytes] = []
    for i, line in enumerate(generate(n, n_keys=N_KEYS, seed=SEED), 1):
        values.append(line.encode())
        keys.append(orjson.loads(values[-1])["endpoint"].encode())
        if i % 100_000 == 0:
            progress(f"generated {i} events")
    return values, keys


def create_topics(bootstrap: str, partitions: int) -> None:
    defaults = KafkaSettings()
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        admin.create_topics(
            [
                NewTopic(TOPIC, num_partitions=partitions, replication_factor=1),
                NewTopic(defaults.dead_letter_topic, num_partitions=1, replication_factor=1),
                NewTopic(defaults.detections_topic, num_partitions=1, replication_factor=1),
            ]
        )
    finally:
        admin.close()


def produce(bootstrap: str, values: list[bytes], keys: list[bytes]) -> dict[str, Any]:
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap],
        acks=1,
        linger_ms=50,
        batch_size=1_048_576,
        max_request_size=8_388_608,
    )
    futures = []
    start = time.perf_counter()
    for i, (value, key) in enumerate(zip(values, keys, strict=True), 1):
        futures.append(producer.send(TOPIC, value=value, key=key))
        if i % 100_000 == 0:
            progress(f"sent {i} events")
    producer.flush()
    seconds = time.perf_counter() - start
    producer.close()
    failed = sum(1 for f in futures if not f.succeeded())
    if failed:
        raise RuntimeError(f"{failed} of {len(futures)} sends failed")
    n_bytes = sum(map(len, values))
    return {
        "events": len(values),
        "seconds": round(seconds, 2),
        "events_per_second": round(len(values) / seconds),
        "mb_per_second": round(n_bytes / seconds / 1e6, 1),
        "mean_event_bytes": round(n_bytes / len(values)),
        "producer": {"acks": 1, "linger_ms": 50, "batch_size": 1_048_576},
    }


def end_offsets(bootstrap: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap])
    try:
        parts = sorted(consumer.partitions_for_topic(TOPIC) or ())
        return dict(consumer.end_offsets([TopicPartition(TOPIC, p) for p in parts]))
    finally:
        consumer.close()


# -- 2. plain kafka-python ----------------------------------------------------------------
@dataclass
class Timing:
    """From the arrival of the first batch to the end of the batch holding the last record,
    with a mark at each tenth of the records (to tell a slowdown along the stream from
    noise)."""

    total: int
    records: int = 0
    first: float | None = None
    last: float | None = None
    cpu_first: float = 0.0
    cpu_last: float = 0.0
    marks: list[tuple[int, float, float]] = field(default_factory=list)

    def batch_arrived(self) -> None:
        if self.first is None:
            self.first, self.cpu_first = time.perf_counter(), time.process_time()
            self.marks.append((0, self.first, self.cpu_first))

    def batch_done(self, n: int) -> None:
        self.records += n
        if self.records * 10 >= self.total * len(self.marks):
            self.marks.append((self.records, time.perf_counter(), time.process_time()))
        if self.records >= self.total and self.last is None:
            self.last, self.cpu_last = self.marks[-1][1:]

    def report(self) -> dict[str, Any]:
        assert self.first is not None and self.last is not None
        seconds = self.last - self.first
        cpu = self.cpu_last - self.cpu_first
        steps = list(zip(self.marks, self.marks[1:], strict=False))
        return {
            "records": self.records,
            "seconds": round(seconds, 3),
            "events_per_second": round(self.records / seconds),
            # CPU of the whole process (all threads); on one pinned core, the rate with
            # the core to ourselves. Less sensitive to other load than the wall-clock rate.
            "cpu_seconds": round(cpu, 3),
            "events_per_cpu_second": round(self.records / cpu) if cpu > 0 else None,
            "events_per_second_by_segment": [
                round((b[0] - a[0]) / (b[1] - a[1])) for a, b in steps if b[1] > a[1]
            ],
            "events_per_cpu_second_by_segment": [
                round((b[0] - a[0]) / (b[2] - a[2])) for a, b in steps if b[2] > a[2]
            ],
        }


def consume_plain(bootstrap: str, total: int, max_poll_records: int) -> dict[str, Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap],
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=max_poll_records,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
    )
    timing = Timing(total)
    n_bytes = 0
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        last_data = time.monotonic()
        while timing.records < total:
            batch = consumer.poll(timeout_ms=500, max_records=max_poll_records)
            if not batch:
                if time.monotonic() - last_data > STALL_SECONDS:
                    raise RuntimeError(f"plain consumer stalled at {timing.records}/{total}")
                continue
            last_data = time.monotonic()
            timing.batch_arrived()
            n = 0
            for records in batch.values():
                for rec in records:
                    n_bytes += len(rec.value)
                n += len(records)
            timing.batch_done(n)
    finally:
        consumer.close()
    return {**timing.report(), "value_bytes": n_bytes}


# -- 3. the daemon ------------------------------------------------------------------------
def consume_daemon(
    bootstrap: str,
    total: int,
    max_poll_records: int,
    state_dir: Path,
    profile_to: Path | None = None,
    embed_cpu: int | None = None,
) -> dict[str, Any]:
    """``embed_cpu``: run with embeddings on (default sampling and budget), the embedding
    worker process pinned to that CPU; the consumer loop stays on the caller's CPU."""
    settings = Settings(
        kafka={
            "bootstrap_servers": [bootstrap],
            "topics": [TOPIC],
            "group_id": f"driftmon-bench-{uuid.uuid4().hex[:8]}",
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": max_poll_records,
        },
        metrics={"host": "127.0.0.1", "port": 0},
        state={"dir": str(state_dir), "checkpoint_every_events": 100_000},
        logging={"level": "warning"},
        embeddings={"enabled": embed_cpu is not None, "threads": 1},
    )
    daemon = Daemon(settings)
    embedding = daemon._embedding
    if embed_cpu is not None:
        assert embedding is not None and embedding.worker.pid is not None
        os.sched_setaffinity(embedding.worker.pid, {embed_cpu})  # the worker is a process
    timing = Timing(total)
    detections: list[Detection] = []
    daemon.on_detection = detections.append

    process_batch = daemon.process_batch

    def timed_process_batch(batch: dict[TopicPartition, list[Any]]) -> int:
        timing.batch_arrived()
        n = process_batch(batch)
        timing.batch_done(n)
        return n

    daemon.process_batch = timed_process_batch  # type: ignore[method-assign]

    seen = 0
    stalled = threading.Event()
    finished = threading.Event()

    def watch() -> None:
        """Stop the daemon once its pipelines have taken every record."""
        nonlocal seen
        last_change, last_seen = time.monotonic(), -1
        while not finished.wait(0.05):
            try:
                states = list(daemon.partitions.values())
            except RuntimeError:  # resized by a rebalance callback meanwhile
                continue
            seen = sum(s.pipeline.accepted + sum(s.pipeline.rejected.values()) for s in states)
            if seen >= total:
                daemon.request_exit()
                return
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            elif time.monotonic() - last_change > STALL_SECONDS:
                stalled.set()
                daemon.request_exit()
                return

    watcher = threading.Thread(target=watch, name="bench-watcher", daemon=True)
    watcher.start()
    profiler = cProfile.Profile() if profile_to else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        rc = daemon.run()
    finally:
        if profiler is not None:
            profiler.disable()
        finished.set()
        watcher.join()
    stopped = time.perf_counter()
    if stalled.is_set() or rc != 0 or timing.last is None:
        raise RuntimeError(f"daemon stopped at {timing.records}/{total} records (exit {rc})")
    if profiler is not None and profile_to is not None:
        profiler.dump_stats(profile_to)
        progress(f"profile of the daemon's main thread written to {profile_to}")
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    assert timing.first is not None
    checkpoints = daemon.registry.get_sample_value("driftmon_checkpoints_total") or 0.0
    extra: dict[str, Any] = {}
    if embedding is not None:
        stats = embedding.worker.stats()
        extra = {
            "embeddings": {
                "embedded": stats.embedded,
                "dropped_queue_full": stats.dropped,
                "sampled": embedding.sampler.sampled,
                "skipped_budget": embedding.sampler.skipped_budget,
                "sample_ratio_at_end": embedding.sampler.ratio,
                "budget_per_second": settings.embeddings.budget_per_second,
                "worker_cpu": embed_cpu,
            }
        }
    return {
        **timing.report(),
        **extra,
        "group_join_seconds": round(timing.first - start, 2),
        "shutdown_seconds": round(stopped - timing.last, 2),
        "pipeline_records_seen": seen,
        "checkpoints": int(checkpoints),
        "detections": len(detections),
        "profiled": profiler is not None,
    }


def kafka_phase(args: argparse.Namespace, pinned: dict[str, Any]) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="driftmon-bench-") as tmp:
        broker = EmbeddedBroker(log_file=Path(tmp) / "broker.log").start()
        try:
            if len(cpus) >= 2:
                # The broker gets its own core, the consumers (later) another one.
                os.sched_setaffinity(broker.pid, {cpus[1]})
                pinned["broker"] = [cpus[1]]
            create_topics(broker.bootstrap, args.partitions)
            progress(f"broker on {broker.bootstrap}; generating {args.events} events")
            t0 = time.perf_counter()
            values, keys = make_events(args.events)
            generate_seconds = time.perf_counter() - t0
            progress(f"producing {len(values)} events")
            produced = produce(broker.bootstrap, values, keys)
            produced["generate_seconds"] = round(generate_seconds, 1)
            progress(f"produced: {produced['events_per_second']} events/s")
            # Every send was acknowledged, so the topic holds exactly this many records.
            # (tansu 0.6's ListOffsets(latest) falls short of the high watermark by up to
            # one producer batch: recorded below, not relied on.)
            total = len(values)
            produced["list_offsets_latest_sum"] = sum(end_offsets(broker.bootstrap).values())
            del values, keys
            gc.collect()

            pin_process({cpus[0]})
            pinned["consumers"] = [cpus[0]]
            runs: list[dict[str, Any]] = []
            for r in range(args.repeats):
                progress(f"run {r + 1}/{args.repeats}: plain kafka-python consumer")
                plain = consume_plain(broker.bootstrap, total, args.max_poll_records)
                progress(f"plain: {plain['events_per_second']} events/s; now the daemon")
                profile_to = args.profile if r == 0 else None
                state_dir = Path(tmp) / f"state-{r}"
                daemon = consume_daemon(
                    broker.bootstrap, total, args.max_poll_records, state_dir, profile_to
                )
                ratio = daemon["events_per_second"] / plain["events_per_second"]
                cpu_ratio = (
                    daemon["events_per_cpu_second"] / plain["events_per_cpu_second"]
                    if daemon["events_per_cpu_second"] and plain["events_per_cpu_second"]
                    else None
                )
                progress(f"daemon: {daemon['events_per_second']} events/s, ratio {ratio:.3f}")
                run: dict[str, Any] = {
                    "plain_kafka_python": plain,
                    "daemon": daemon,
                    "daemon_to_plain_ratio": round(ratio, 3),
                    "daemon_to_plain_cpu_ratio": round(cpu_ratio, 3) if cpu_ratio else None,
                }
                if args.embeddings:
                    progress("the daemon again, embeddings on (worker on the other CPU)")
                    on = consume_daemon(
                        broker.bootstrap,
                        total,
                        args.max_poll_records,
                        Path(tmp) / f"state-emb-{r}",
                        embed_cpu=cpus[1],
                        profile_to=(
                            args.profile.with_suffix(".embeddings" + args.profile.suffix)
                            if args.profile and r == 0
                            else None
                        ),
                    )
                    on_off = on["events_per_second"] / daemon["events_per_second"]
                    progress(f"embeddings on: {on['events_per_second']} events/s, {on_off:.3f}x")
                    run["daemon_embeddings_on"] = on
                    run["embeddings_on_to_off_ratio"] = round(on_off, 3)
                runs.append(run)
        finally:
            pin_process(set(cpus))
            broker.stop()
    return {
        "topic": TOPIC,
        "partitions": args.partitions,
        "keys": N_KEYS,
        "max_poll_records": args.max_poll_records,
        "produce": produced,
        "runs": runs,
        "plain_events_per_second_median": round(
            statistics.median(r["plain_kafka_python"]["events_per_second"] for r in runs)
        ),
        "daemon_events_per_second_median": round(
            statistics.median(r["daemon"]["events_per_second"] for r in runs)
        ),
        "daemon_to_plain_ratio_median": round(
            statistics.median(r["daemon_to_plain_ratio"] for r in runs), 3
        ),
        **(
            {
                "embeddings_on_to_off_ratio_median": round(
                    statistics.median(r["embeddings_on_to_off_ratio"] for r in runs), 3
                )
            }
            if args.embeddings
            else {}
        ),
    }


# -- 4. memory of many active keys --------------------------------------------------------
def lines_per_key(n_keys: int, per_key: int) -> list[list[bytes]]:
    """``per_key`` completion events for each of ``n_keys`` keys, from one generated stream.

    Every event gets inline feedback (when it has none) so that the ``feedback`` stream
    warms up along with the others; in the raw stream only ~25% of events carry feedback.
    """
    rng = random.Random(SEED)
    pool: dict[tuple[str, str], list[bytes]] = {}
    complete = 0
    stream: Iterator[str] = generate(sys.maxsize, n_keys=n_keys, seed=SEED)
    for i, line in enumerate(stream, 1):
        event = orjson.loads(line)
        if event.get("kind") == "feedback":
            continue
        lines = pool.setdefault((event["endpoint"], event["model"]), [])
        if len(lines) >= per_key:
            continue
        event.setdefault("feedback", 1 if rng.random() < 0.8 else -1)
        lines.append(orjson.dumps(event))
        if len(lines) == per_key:
            complete += 1
            if complete == n_keys:
                break
        if i % 100_000 == 0:
            progress(f"memory: generated {i} events, {complete}/{n_keys} keys complete")
    return list(pool.values())


def memory_child(pool: Path, events_per_key: int, distinct_per_key: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: RSS before and after every key of ``pool`` (a file of
    ``distinct_per_key`` lines per key, key after key) is warmed up."""
    rss_start = proc_status_kib("VmRSS")
    # The input stays in the file (page cache, not this process's memory) and each event
    # is read when fed, as a daemon holds only its current batch: RSS is driftmon's own.
    fd = os.open(pool, os.O_RDONLY)
    spans: list[tuple[int, int]] = []
    offset = 0
    with open(pool, "rb") as fh:
        for line in fh:
            spans.append((len(line) - 1, offset))
            offset += len(line)
    per_key = [spans[i : i + distinct_per_key] for i in range(0, len(spans), distinct_per_key)]
    del spans
    logs.configure("warning", "json")  # the daemon's checkpoint logs; stdout is our JSON
    state_dir = pool.parent / "state"
    # Defaults otherwise. A Pipeline without a sampler never embeds, whatever the flag; the
    # flag only keeps the Daemon of the housekeeping step from loading the model.
    settings = Settings(state={"dir": str(state_dir)}, embeddings={"enabled": False})
    pipeline = Pipeline(pipeline_config(settings))
    monitor = pipeline.monitor
    gc.collect()
    rss_before = proc_status_kib("VmRSS")
    progress(f"memory: feeding {events_per_key} events to each of {len(per_key)} keys")
    trajectory: list[tuple[int, int]] = []
    detections = 0
    start = time.perf_counter()
    index = 0
    for j in range(events_per_key):
        for lines in per_key:
            length, at = lines[j % len(lines)]
            detections += len(pipeline.process(os.pread(fd, length, at), index).detections)
            index += 1
        if (j + 1) % 50 == 0 or j + 1 == events_per_key:
            trajectory.append((j + 1, proc_status_kib("VmRSS")))
            progress(f"memory: {j + 1} events per key, RSS {trajectory[-1][1] // 1024} MiB")
    seconds = time.perf_counter() - start
    os.close(fd)
    key_states = monitor.key_states()
    streams = [s for key in key_states for s in key.streams.values()]
    still_learning = sum(s.learning for s in streams)
    if still_learning:
        raise RuntimeError(f"{still_learning} feature streams are still in warm-up")
    gc.collect()
    rss_after = proc_status_kib("VmRSS")
    rss_peak = proc_status_kib("VmHWM")  # before the snapshot and restore below add theirs
    # Freed warm-up buffers stay in the allocator's heap; glibc can hand some back.
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    rss_trimmed = proc_status_kib("VmRSS")
    progress("memory: daemon housekeeping with these keys")
    housekeeping = daemon_housekeeping(settings, pipeline, index)
    t0 = time.perf_counter()
    snapshot = monitor.snapshot()  # what every checkpoint of this partition writes
    snapshot_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    # What a partition assignment reads.
    Pipeline(pipeline_config(settings)).monitor.restore(snapshot)
    restore_seconds = time.perf_counter() - t0
    keys = len(key_states)
    snapshot_bytes = len(snapshot)
    return {
        "keys": keys,
        "keys_evicted": monitor.keys_evicted,
        "events_per_key": events_per_key,
        "distinct_events_per_key": distinct_per_key,
        "warmup_events": settings.detectors.warmup_events,
        "feature_streams_per_key": round(len(streams) / keys, 2),
        "streams_still_learning": still_learning,
        "events_fed": index,
        "feed_events_per_second": round(index / seconds),
        "detections": detections,
        "rss_mib_at_start": round(rss_start / 1024, 1),
        "rss_mib_before_keys": round(rss_before / 1024, 1),
        "rss_mib_after_keys": round(rss_after / 1024, 1),
        "rss_peak_mib": round(rss_peak / 1024, 1),
        "rss_mib_after_malloc_trim": round(rss_trimmed / 1024, 1),
        "rss_bytes_per_key": round((rss_after - rss_before) * 1024 / keys),
        "rss_bytes_per_key_after_malloc_trim": round((rss_trimmed - rss_before) * 1024 / keys),
        "rss_mib_by_events_per_key": {str(j): round(kib / 1024, 1) for j, kib in trajectory},
        "snapshot_bytes": snapshot_bytes,
        "snapshot_bytes_per_key": round(snapshot_bytes / keys),
        "snapshot_seconds": round(snapshot_seconds, 3),
        "restore_seconds": round(restore_seconds, 3),
        "daemon_housekeeping": housekeeping,
    }


class _StubConsumer:
    """The two consumer calls of Daemon.refresh_metrics and Daemon.checkpoint."""

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int | None = None) -> None:
        pass


class _StubProducer:
    def flush(self, timeout: float | None = None) -> None:
        pass


def daemon_housekeeping(settings: Settings, pipeline: Pipeline, offset: int) -> dict[str, Any]:
    """The daemon's per-key work outside the per-event path, on ``pipeline`` as the state of
    one assigned partition: the gauge refresh (every 5 s on the poll loop), a /metrics
    scrape (in the HTTP thread, holding the GIL) and a checkpoint (on the poll loop, every
    ``checkpoint_every_events`` or ``checkpoint_every_seconds``, and on revoke)."""
    daemon = Daemon(settings)
    daemon._consumer, daemon._producer = _StubConsumer(), _StubProducer()
    # Every record since the start is new to the checkpoint: it writes the whole state.
    daemon.partitions[TopicPartition(TOPIC, 0)] = PartitionState(
        pipeline, next_offset=offset, events_since_checkpoint=offset
    )
    out: dict[str, Any] = {"rss_mib_before": round(proc_status_kib("VmRSS") / 1024, 1)}
    for name in ("refresh_metrics_first_seconds", "refresh_metrics_seconds"):
        t0 = time.perf_counter()
        daemon.refresh_metrics()
        out[name] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    exposition = generate_latest(daemon.registry)
    out["scrape_seconds"] = round(time.perf_counter() - t0, 2)
    out["scrape_mb"] = round(len(exposition) / 1e6, 1)
    out["scrape_samples"] = sum(not line.startswith(b"#") for line in exposition.splitlines())
    del exposition
    gc.collect()
    out["rss_mib_after_refresh_and_scrape"] = round(proc_status_kib("VmRSS") / 1024, 1)
    t0 = time.perf_counter()
    daemon.checkpoint()
    out["checkpoint_seconds"] = round(time.perf_counter() - t0, 2)
    out["checkpoint_file_mb"] = round(
        sum(f.stat().st_size for f in settings.state.dir.iterdir()) / 1e6, 1
    )
    return out


def memory_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Generates the events here, measures in a fresh interpreter that only reads them."""
    progress(f"memory: generating {args.distinct_per_key} events for each of {args.keys} keys")
    with tempfile.TemporaryDirectory(prefix="driftmon-bench-") as tmp:
        pool = Path(tmp) / "pool.jsonl"
        per_key = lines_per_key(args.keys, args.distinct_per_key)
        pool.write_bytes(b"".join(line + b"\n" for lines in per_key for line in lines))
        del per_key
        progress("memory: fresh subprocess")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            f"--memory-child={pool}",
            f"--events-per-key={args.events_per_key}",
            f"--distinct-per-key={args.distinct_per_key}",
        ]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500_000, help="events produced to Kafka")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--max-poll-records", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=1, help="plain+daemon consumption pairs")
    ap.add_argument("--keys", type=int, default=10_000, help="active keys for the memory run")
    ap.add_argument("--events-per-key", type=int, default=350, help="memory run, per key")
    ap.add_argument("--distinct-per-key", type=int, default=4, help="memory run, cycled")
    ap.add_argument("--skip-kafka", action="store_true", help="memory measurement only")
    ap.add_argument("--skip-memory", action="store_true", help="Kafka phases only")
    ap.add_argument(
        "--profile",
        type=Path,
        help="cProfile the first daemon run into FILE (with --embeddings, the first "
        "embeddings-on run too, into FILE with .embeddings before its suffix)",
    )
    ap.add_argument(
        "--embeddings",
        action="store_true",
        help="also run the daemon with embeddings on (needs the embeddings extra)",
    )
    ap.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)  # the pool file
    args = ap.parse_args()

    if args.memory_child is not None:
        print(
            json.dumps(memory_child(args.memory_child, args.events_per_key, args.distinct_per_key))
        )
        return

    logs.configure("warning", "json")  # as `driftmon run` would with logging.level: warning
    pinned: dict[str, Any] = {"how": "os.sched_setaffinity"}
    result: dict[str, Any] = {
        "benchmark": "daemon_end_to_end",
        "nproc": os.cpu_count(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "pinned": pinned,
    }
    if not args.skip_kafka:
        result["kafka"] = kafka_phase(args, pinned)
    if not args.skip_memory:
        pinned["memory_subprocess"] = "not pinned (memory only)"
        result["memory"] = memory_phase(args)
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
