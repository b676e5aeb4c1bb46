"""Key churn through the real daemon: floods of new endpoints against ``limits.max_keys``.

A stream of 100 steady keys is interrupted four times by a flood of ``--flood-keys``
events, each from an endpoint never seen before (a client putting a request id in the
endpoint, say). With ``limits.max_keys`` at ``--max-keys`` every flood event creates a
key and evicts one. The daemon (in-process, embeddings off) consumes the whole topic from
an embedded tansu broker; for each segment of the stream the benchmark reports the rate,
the process RSS at its end, and, in the middle of each flood, the size and time of one
``/metrics`` scrape. Prints JSON; progress on stderr.

    python benchmarks/churn.py [--flood-keys 50000] [--steady 30000] [--max-keys 100]

``churn_to_steady_ratio`` (events/s during floods over events/s of the steady segments
around them, same run) and ``rss_mib_after_flood`` (flat after the first flood when memory
is bounded by ``max_keys``) are the figures; absolute rates move with the machine's load.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon import logs
from driftmon.daemon import Daemon
from driftmon.demo.synthetic import generate
from driftmon.demo.tansu import EmbeddedBroker, free_port
from driftmon.settings import KafkaSettings, Settings

TOPIC = "llm-outputs"
STALL_SECONDS = 180.0


def progress(msg: str) -> None:
    print(f"[churn {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def build_stream(steady: int, flood_keys: int, floods: int) -> tuple[list[bytes], list[str]]:
    """Values and a segment label per record: steady, flood-1, steady, flood-2, …"""
    lines = [line.encode() for line in generate(steady * (floods + 1), n_keys=100, seed=3)]
    flood_src = [orjson.loads(line) for line in generate(flood_keys, n_keys=100, seed=4)]
    values: list[bytes] = []
    labels: list[str] = []
    for seg in range(floods + 1):
        values.extend(lines[seg * steady : (seg + 1) * steady])
        labels.extend(["steady"] * steady)
        if seg == floods:
            break
        for i, event in enumerate(flood_src):
            event = dict(event, endpoint=f"churn-{seg}-{i}")
            values.append(orjson.dumps(event))
            labels.append(f"flood-{seg + 1}")
    return values, labels


def produce(bootstrap: str, values: list[bytes]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    defaults = KafkaSettings()
    try:
        admin.create_topics(
            [
                NewTopic(name, num_partitions=1, replication_factor=1)
                for name in (TOPIC, defaults.dead_letter_topic, defaults.detections_topic)
            ]
        )
    finally:
        admin.close()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], acks=1, linger_ms=50, batch_size=1_048_576
    )
    futures = [producer.send(TOPIC, value=v) for v in values]
    producer.flush()
    producer.close()
    failed = sum(1 for f in futures if not f.succeeded())
    if failed:
        raise RuntimeError(f"{failed} sends failed")


def scrape(port: int) -> dict[str, float]:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
        body = resp.read()
    return {
        "bytes": len(body),
        "seconds": round(time.perf_counter() - start, 3),
        "series": body.count(b"\n") - body.count(b"\n#"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    logs.configure("warning", "json")  # stdout is the report
    values, labels = build_stream(args.steady, args.flood_keys, args.floods)
    total = len(values)
    with tempfile.TemporaryDirectory(prefix="driftmon-churn-") as tmp:
        broker = EmbeddedBroker(log_file=Path(tmp) / "broker.log").start()
        try:
            progress(f"producing {total} events to {broker.bootstrap}")
            produce(broker.bootstrap, values)
            del values
            gc.collect()
            port = free_port()
            settings = Settings(
                kafka={
                    "bootstrap_servers": [broker.bootstrap],
                    "topics": [TOPIC],
                    "group_id": f"churn-{uuid.uuid4().hex[:8]}",
                    "auto_offset_reset": "earliest",
                    "session_timeout_ms": 6000,
                    "heartbeat_interval_ms": 1000,
                },
                metrics={"host": "127.0.0.1", "port": port},
                state={"dir": str(Path(tmp) / "state"), "checkpoint_every_events": 100_000},
                logging={"level": "warning"},
                embeddings={"enabled": False},
                limits={"max_keys": args.max_keys},
            )
            daemon = Daemon(settings)
            # Per record: (segment, time it was done, RSS after its batch).
            marks: list[tuple[int, float, float]] = []
            process_batch = daemon.process_batch
            done = 0

            def timed(batch: dict[TopicPartition, list[Any]]) -> int:
                nonlocal done
                n = process_batch(batch)
                done += n
                marks.append((done, time.perf_counter(), rss_mib()))
                return n

            daemon.process_batch = timed  # type: ignore[method-assign]
            scrapes: dict[str, dict[str, float]] = {}
            finished = threading.Event()
            bounds = _segments(labels)

            def watch() -> None:
                last, last_change = -1, time.monotonic()
                while not finished.wait(0.05):
                    for name, (lo, hi) in bounds.items():
                        mid = lo + (hi - lo) // 2
                        if name.startswith("flood") and name not in scrapes and mid <= done < hi:
                            scrapes[name] = scrape(port)
                    if done >= total:
                        daemon.request_exit()
                        return
                    if done != last:
                        last, last_change = done, time.monotonic()
                    elif time.monotonic() - last_change > STALL_SECONDS:
                        daemon.request_exit()
                        return

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            progress("daemon consuming")
            rc = daemon.run()
            finished.set()
            watcher.join()
            if rc != 0 or done < total:
                raise RuntimeError(f"daemon stopped at {done}/{total} (exit {rc})")
        finally:
            broker.stop()
    return _report(args, marks, bounds, scrapes)


def _segments(labels: list[str]) -> dict[str, tuple[int, int]]:
    """Record ranges [lo, hi) per segment; steady segments numbered steady-0, steady-1 …"""
    out: dict[str, tuple[int, int]] = {}
    start = 0
    n_steady = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            name = labels[start]
            if name == "steady":
                name = f"steady-{n_steady}"
                n_steady += 1
            out[name] = (start, i)
            start = i
    return out


def _report(
    args: argparse.Namespace,
    marks: list[tuple[int, float, float]],
    bounds: dict[str, tuple[int, int]],
    scrapes: dict[str, dict[str, float]],
) -> dict[str, Any]:
    def at(record: int) -> tuple[float, float]:
        """Time and RSS when the batch holding ``record`` was done."""
        for n, t, rss in marks:
            if n >= record:
                return t, rss
        return marks[-1][1], marks[-1][2]

    segments: dict[str, Any] = {}
    for name, (lo, hi) in bounds.items():
        t0, _ = at(lo) if lo else (marks[0][1], marks[0][2])
        t1, rss = at(hi)
        # The first segment includes the first batch's records before t0: count from it.
        n = hi - (marks[0][0] if lo == 0 else lo)
        segments[name] = {
            "events": hi - lo,
            "events_per_second": round(n / (t1 - t0)) if t1 > t0 else None,
            "rss_mib_at_end": round(rss, 1),
        }
    steady = [s["events_per_second"] for k, s in segments.items() if k.startswith("steady")]
    flood = [s["events_per_second"] for k, s in segments.items() if k.startswith("flood")]
    steady_rate = statistics.median(r for r in steady[1:] if r)  # steady-0 includes warm-up
    flood_rss = [s["rss_mib_at_end"] for k, s in segments.items() if k.startswith("flood")]
    return {
        "benchmark": "churn",
        "flood_keys": args.flood_keys,
        "floods": args.floods,
        "steady_events_per_segment": args.steady,
        "max_keys": args.max_keys,
        "segments": segments,
        "steady_events_per_second_median": round(steady_rate),
        "flood_events_per_second": flood,
        "churn_to_steady_ratio": [round(r / steady_rate, 3) for r in flood],
        "rss_mib_after_flood": flood_rss,
        "rss_growth_after_first_flood": round(max(flood_rss[1:]) / flood_rss[0] - 1, 3)
        if len(flood_rss) > 1
        else None,
        "metrics_scrape_mid_flood": scrapes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood-keys", type=int, default=50_000)
    p.add_argument("--floods", type=int, default=4)
    p.add_argument("--steady", type=int, default=30_000, help="events of each steady segment")
    p.add_argument("--max-keys", type=int, default=100)
    print(json.dumps(run(p.parse_args()), indent=1))


if __name__ == "__main__":
    main()
