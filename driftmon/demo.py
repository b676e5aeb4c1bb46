"""``driftmon demo``: an embedded broker, a synthetic stream with a silent upgrade, the
daemon on it, and a live view of what it sees."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon import logs
from driftmon.core.monitor import Detection
from driftmon.daemon import Daemon
from driftmon.settings import Settings
from driftmon.synthetic import Upgrade, default_demo_stream
from driftmon.tansu import BrokerUnavailable, EmbeddedBroker, free_port

TOPIC = "llm-outputs"
EVENTS_PER_SECOND = 400.0
SHOWN_FEATURES = ("output_chars", "json_valid", "preamble", "code_fence", "feedback")


def _settings(bootstrap: str, state_dir: str, metrics_port: int) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": [bootstrap],
            "topics": [TOPIC],
            "group_id": "driftmon-demo",
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        metrics={"host": "127.0.0.1", "port": metrics_port},
        state={"dir": state_dir, "checkpoint_every_seconds": 10},
        logging={"level": "warning"},
        # The demo's upgrade shows in cheap features within seconds; embedding it would
        # only compete for the CPU (embeddings need ~400 samples per key to calibrate).
        embeddings={"enabled": False},
        endpoints={
            "sql-assistant": {
                "format": "json",
                "json_schema": {"type": "object", "required": ["query"]},
            }
        },
    )


def _produce(
    bootstrap: str,
    lines: list[str],
    stop: threading.Event,
    sent: list[int],
    upgrade: Upgrade,
    upgrade_at: dict[str, int],
) -> None:
    """Produce ``lines`` keyed by endpoint at a steady rate. Records where the upgraded
    endpoint's first upgraded event landed in ``upgrade_at`` (``partition``, ``offset``):
    the daemon's detections are partition offsets, not stream indices."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=10)
    start = time.monotonic()
    marked = False
    for i, line in enumerate(lines):
        if stop.is_set():
            break
        delay = start + i / EVENTS_PER_SECOND - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            key = line.split('"endpoint": "', 1)[1].split('"', 1)[0].encode()
        except IndexError:
            key = b"unparsable"
        future = producer.send(TOPIC, value=line.encode(), key=key)
        if not marked and i >= upgrade.at_event and key == upgrade.endpoint.encode():
            marked = True
            future.add_callback(
                lambda md: upgrade_at.update(partition=md.partition, offset=md.offset)
            )
        sent[0] = i + 1
    producer.flush()
    producer.close()


def _upgrade_line(upgrade: Upgrade, at: dict[str, int]) -> str:
    where = f" = partition {at['partition']} offset {at['offset']}" if "offset" in at else ""
    return f"the upgrade started at event {upgrade.at_event:,} of the stream{where}"


def _render(
    daemon: Daemon,
    detections: list[Detection],
    sent: int,
    total: int,
    url: str,
    upgrade: Upgrade,
    upgrade_at: dict[str, int],
) -> str:
    rows = [
        f"driftmon demo — {sent:,}/{total:,} events produced; metrics at {url}",
        f"silent upgrade: {upgrade.endpoint}'s model starts fencing JSON, adding preambles "
        "and writing longer;",
        _upgrade_line(upgrade, upgrade_at) + " (detections show partition offsets)",
        "",
        f"{'endpoint':<15} {'events':>7}  " + "  ".join(f"{f[:12]:>18}" for f in SHOWN_FEATURES),
        f"{'':<15} {'':>7}  " + "  ".join(f"{'now/base  PH stat':>18}" for _ in SHOWN_FEATURES),
    ]
    for _tp, monitor in daemon.monitors():
        for key in sorted(monitor.key_states(), key=lambda k: k.endpoint):
            cells = []
            for name in SHOWN_FEATURES:
                s = key.streams.get(name)
                if s is None:
                    cells.append(f"{'-':>18}")
                    continue
                stat, thr = s.statistics().get("page_hinkley", (float("nan"), float("nan")))
                if s.learning:
                    cells.append(f"{'learning':>18}")
                else:
                    cells.append(f"{s.current:5.2f}/{s.baseline:<5.2f} {stat:3.0f}/{thr:<3.0f}")
            rows.append(f"{key.endpoint[:15]:<15} {key.events:>7,}  " + "  ".join(cells))
    rows.append("")
    rows.append(f"detections ({len(detections)}):")
    for d in detections[-12:]:
        rows.append(
            f"  offset {d.event_index:>6}  {d.endpoint:<14} {d.feature:<15} {d.detector:<12} "
            f"baseline {d.baseline:7.3f} → current {d.current:7.3f}{_onset(d)}"
        )
    return "\n".join(rows)


def _onset(d: Detection) -> str:
    n = d.events_since_onset
    return "" if n is None else f", began ~{n} event{'' if n == 1 else 's'} ago"


def demo(args: argparse.Namespace) -> int:
    lines, upgrade = default_demo_stream(seed=0, bad_line_every=997)
    if args.events:
        lines = lines[: args.events]
    tty = sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="driftmon-demo-") as tmp:
        try:
            broker = EmbeddedBroker(log_file=Path(tmp) / "broker.log").start()
        except BrokerUnavailable as exc:
            print(f"driftmon demo: {exc}", file=sys.stderr)
            return 1
        try:
            admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap])
            admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
            admin.close()
            port = free_port()
            settings = _settings(broker.bootstrap, str(Path(tmp) / "state"), port)
            logs.configure(settings.logging.level, settings.logging.format)
            daemon = Daemon(settings)
            detections: list[Detection] = []
            url = f"http://127.0.0.1:{port}/metrics"

            def seen(d: Detection) -> None:
                detections.append(d)
                if not tty:
                    print(
                        f"detection at offset {d.event_index}: {d.endpoint}/{d.model} "
                        f"{d.feature} ({d.detector}) baseline {d.baseline:.3f} "
                        f"→ current {d.current:.3f}{_onset(d)}",
                        flush=True,
                    )

            daemon.on_detection = seen
            stop = threading.Event()
            sent = [0]
            upgrade_at: dict[str, int] = {}
            producer = threading.Thread(
                target=_produce,
                args=(broker.bootstrap, lines, stop, sent, upgrade, upgrade_at),
                daemon=True,
            )
            producer.start()
            signal.signal(signal.SIGINT, daemon.request_exit)
            signal.signal(signal.SIGTERM, daemon.request_exit)
            deadline = time.monotonic() + args.duration

            view = [""]

            def watch() -> None:
                done_at = None
                while not daemon.should_exit:
                    consumed = sum(s.pipeline.accepted for s in list(daemon.partitions.values()))
                    view[0] = _render(
                        daemon, detections, sent[0], len(lines), url, upgrade, upgrade_at
                    )
                    if tty:
                        sys.stdout.write("\x1b[H\x1b[2J" + view[0] + "\n")
                        sys.stdout.flush()
                    if not producer.is_alive() and done_at is None and consumed:
                        done_at = time.monotonic()
                    if time.monotonic() > deadline or (done_at and time.monotonic() - done_at > 8):
                        daemon.request_exit()
                    time.sleep(1.0)
                stop.set()

            viewer = threading.Thread(target=watch, daemon=True)
            viewer.start()
            if not tty:
                print(
                    f"driftmon demo: producing {len(lines):,} events; metrics at {url}", flush=True
                )
            code = daemon.run()
            viewer.join(timeout=3)
            if tty:
                print("\x1b[H\x1b[2J" + view[0])
            print(f"\n{len(detections)} detections; {_upgrade_line(upgrade, upgrade_at)}.")
            return code
        finally:
            broker.stop()
