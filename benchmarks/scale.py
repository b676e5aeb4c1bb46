"""State in Kafka (``state.backend: kafka``): restore time and state size per key.

A Monitor with ``--keys`` keys, each past its warm-up (``--events-per-key`` events of 12
features), is checkpointed to a compacted topic on an embedded tansu broker through
``KafkaCheckpointStore`` (chunked at ``state.chunk_bytes``, default 900 kB). A new store,
as a replica taking the partition over would, then reads the state partition to its end,
reassembles the snapshot and restores the Monitor; that is timed ``--repeat`` times
(median), next to the same restore from a local checkpoint file. Prints JSON.

    python benchmarks/scale.py [--keys 1000 5000] [--events-per-key 320] [--repeat 3]

Figures: ``state_bytes_per_key`` and ``restore_seconds_per_1000_keys`` (topic read +
reassembly + decode + Monitor.restore). Events/s with several replicas is not measured
here: on a 2-core machine shared with the broker it would measure the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from driftmon.checkpoint import Checkpoint, DirectoryCheckpointStore, KafkaCheckpointStore
from driftmon.config import monitor_config
from driftmon.core.monitor import Monitor
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.settings import Settings

FEATURES = (
    "output_chars", "output_tokens", "latency", "sentence_words", "paragraphs", "json_valid",
    "refusal", "preamble", "code_fence", "truncated", "schema_valid", "list_items",
)  # fmt: skip
BINARY = {"json_valid", "refusal", "preamble", "code_fence", "truncated", "schema_valid"}


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
    print(f"building {keys} keys x {events_per_key} events", file=sys.stderr)
    state = monitor(keys, events_per_key).snapshot()
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
        "chunks": -(-len(state) // 900_000),
        "write_seconds": round(write_seconds, 3),
        "restore_seconds_kafka": round(kafka_s, 3),
        "restore_seconds_per_1000_keys_kafka": round(kafka_s / keys * 1000, 3),
        "restore_seconds_file": round(file_s, 3),
        "restore_seconds_per_1000_keys_file": round(file_s / keys * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--events-per-key", type=int, default=320)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr)
    )  # JSON only on stdout
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_file=Path(tmp) / "b.log") as b:
        results = [measure(b, n, args.events_per_key, args.repeat) for n in args.keys]
    print(json.dumps({"benchmark": "scale", "state_topic": results}, indent=1))


if __name__ == "__main__":
    main()
