"""The repartition stage's cost: events/s through it beside a plain consume loop. Prints JSON
(progress goes to stderr).

Starts a tansu broker (memory storage), creates a ``--partitions``-partition input topic and
produces ``--events`` events unkeyed, round robin over the partitions, for each format:
``native`` (one event a message) and ``otlp_json`` (``--spans`` answer spans a message, 8
endpoints). Then, on the same topic, from the beginning:

- ``plain``: a group-less kafka-python consumer that only touches each value;
- ``stage``: :class:`driftmon.repartition.RepartitionStage` in-process (its own group,
  decode for the endpoint, produce with acks=all to a new repartition topic, flush, commit);
- ``forward``: the same stage with its keying replaced by a fixed rotation of 8 keys:
  what consuming, producing and committing cost without decoding.

All use ``--max-poll-records``; the three run in turn ``--repeats`` times (medians reported,
each run on a fresh group and repartition topic). Rates are timed from the end of the first
non-empty poll to the end of the last, so group join and topic creation are not counted.
Events are counted as decoded events (spans for OTLP). ``stage_to_plain_ratio`` (the stage
against reading the inputs directly) and ``stage_to_forward_ratio`` (how much of that is
decoding) are the figures that survive a noisy machine.

    python benchmarks/repartition.py [--events 100000] [--partitions 3] [--spans 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from driftmon import logs
from driftmon.demo.tansu import EmbeddedBroker
from driftmon.metrics import Metrics
from driftmon.repartition import Keyed, RepartitionStage
from driftmon.settings import InputSettings, KafkaSettings

ENDPOINTS = [f"endpoint-{i}" for i in range(8)]


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def native_messages(events: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "endpoint": ENDPOINTS[i % len(ENDPOINTS)],
                "model": "m1",
                "output": f"An answer of a few words, number {i}. " * 4,
                "latency_ms": 500 + i % 300,
            }
        ).encode()
        for i in range(events)
    ]


def otlp_messages(events: int, spans: int) -> list[bytes]:
    """OTLP JSON exports of ``spans`` answer spans each, one endpoint (service) a message."""
    out = []
    for m in range(events // spans):
        batch = []
        for s in range(spans):
            attributes = {
                "gen_ai.operation.name": {"stringValue": "chat"},
                "gen_ai.request.model": {"stringValue": "m1"},
                "gen_ai.usage.output_tokens": {"intValue": str(10 + s)},
            }
            batch.append(
                {
                    "traceId": f"{m:032x}",
                    "spanId": f"{s:016x}",
                    "startTimeUnixNano": "1700000000000000000",
                    "endTimeUnixNano": "1700000000500000000",
                    "attributes": [{"key": k, "value": v} for k, v in attributes.items()],
                }
            )
        service = {"key": "service.name", "value": {"stringValue": ENDPOINTS[m % len(ENDPOINTS)]}}
        resource = {"resource": {"attributes": [service]}, "scopeSpans": [{"spans": batch}]}
        out.append(json.dumps({"resourceSpans": [resource]}).encode())
    return out


def produce(bootstrap: str, topic: str, partitions: int, messages: list[bytes]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], linger_ms=20, batch_size=262_144, acks=1
    )
    for i, value in enumerate(messages):
        producer.send(topic, value=value, partition=i % partitions)
    producer.flush()
    producer.close()


def rate(marks: list[tuple[float, int]], per_message: int) -> dict[str, Any]:
    """Events/s from the end of the first non-empty poll to the end of the last."""
    (t0, _), (t1, _) = marks[0], marks[-1]
    messages = sum(n for _, n in marks[1:])
    return {
        "events_per_second": round(messages * per_message / (t1 - t0)),
        "seconds": round(t1 - t0, 3),
        "polls": len(marks),
    }


def plain(bootstrap: str, topic: str, partitions: int, total: int, max_poll: int) -> Any:
    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap], enable_auto_commit=False, max_poll_records=max_poll
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    marks: list[tuple[float, int]] = []
    seen = touched = 0
    while seen < total:
        batch = consumer.poll(timeout_ms=1000)
        n = 0
        for records in batch.values():
            for rec in records:
                touched += len(rec.value)
                n += 1
        if n:
            seen += n
            marks.append((time.perf_counter(), n))
    consumer.close()
    return marks


def stage(
    bootstrap: str,
    topic: str,
    total: int,
    max_poll: int,
    fmt: str,
    *,
    decode: bool = True,
    run: int = 0,
) -> Any:
    settings = KafkaSettings(
        bootstrap_servers=[bootstrap],
        topics=[topic],
        group_id=f"bench-{topic}-{decode}-{run}",
        auto_offset_reset="earliest",
        max_poll_records=max_poll,
    )
    registry = CollectorRegistry()
    stage_ = RepartitionStage(
        settings,
        InputSettings(format=fmt),
        f"{topic}-by-endpoint-{decode}-{run}",
        Metrics(registry),
        registry,
    )
    if not decode:  # the floor: same clients, commits and keys spread, no decoding
        keys = [Keyed(b"%d" % i, "endpoint") for i in range(len(ENDPOINTS))]
        count = itertools.count()
        stage_.keyer = lambda value: keys[next(count) % len(keys)]  # type: ignore[assignment]
    marks: list[tuple[float, int]] = []
    step = stage_.step

    def timed() -> int:
        n = step()
        if n:
            marks.append((time.perf_counter(), n))
            if sum(m for _, m in marks) >= total:
                stage_.should_exit = True
        return n

    stage_.step = timed  # type: ignore[method-assign]
    stage_.run()
    resends = registry.get_sample_value("driftmon_repartition_resends_total")
    return marks, resends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--spans", type=int, default=20, help="answer spans per OTLP message")
    ap.add_argument("--max-poll-records", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="plain, stage, forward rounds")
    args = ap.parse_args()
    results: dict[str, Any] = {
        "events": args.events,
        "partitions": args.partitions,
        "max_poll_records": args.max_poll_records,
    }
    logs.configure("warning", "json")  # stdout is our JSON
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker,
    ):
        formats = {
            "native": (native_messages(args.events), 1),
            "otlp_json": (otlp_messages(args.events, args.spans), args.spans),
        }
        for fmt, (messages, per_message) in formats.items():
            topic = f"in-{fmt}"
            say(f"{fmt}: producing {len(messages)} messages")
            produce(broker.bootstrap, topic, args.partitions, messages)
            runs: dict[str, list[dict[str, Any]]] = {"plain": [], "stage": [], "forward": []}
            resends = 0.0
            for repeat in range(args.repeats):
                say(f"{fmt} #{repeat}: plain consumer, stage, forward only")
                runs["plain"].append(
                    rate(
                        plain(
                            broker.bootstrap,
                            topic,
                            args.partitions,
                            len(messages),
                            args.max_poll_records,
                        ),
                        per_message,
                    )
                )
                for name, decode in (("stage", True), ("forward", False)):
                    marks, resent = stage(
                        broker.bootstrap,
                        topic,
                        len(messages),
                        args.max_poll_records,
                        fmt,
                        decode=decode,
                        run=repeat,
                    )
                    runs[name].append(rate(marks, per_message))
                    resends += resent or 0.0
            eps = {
                name: statistics.median(r["events_per_second"] for r in found)
                for name, found in runs.items()
            }
            results[fmt] = {
                "messages": len(messages),
                "events_per_message": per_message,
                "median_events_per_second": eps,
                "runs": runs,
                "resends": resends,
                "stage_to_plain_ratio": round(eps["stage"] / eps["plain"], 3),
                "stage_to_forward_ratio": round(eps["stage"] / eps["forward"], 3),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
