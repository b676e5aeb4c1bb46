"""``driftmon demo``: an embedded broker, a synthetic stream with a silent upgrade, the
daemon on it, and a live view of what it sees.

Ctrl-C or SIGTERM stops the daemon first (a clean checkpoint), then the producer, then the
broker, and prints the summary. The broker runs in its own session, so the terminal's
SIGINT, sent to the whole foreground process group, does not stop it before the daemon.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon import logs
from driftmon.core.monitor import Detection
from driftmon.core.units import format_value, unit
from driftmon.daemon import Daemon
from driftmon.demo.synthetic import Upgrade, default_demo_stream
from driftmon.demo.tansu import BrokerUnavailable, EmbeddedBroker, free_port
from driftmon.settings import Settings

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
        "cells: now/baseline in the column's unit, Page-Hinkley statistic/threshold",
        "",
        f"{'endpoint':<15} {'events':>7}  " + "  ".join(f"{f[:20]:>20}" for f in SHOWN_FEATURES),
        f"{'':<15} {'':>7}  " + "  ".join(f"{unit(f)[:20]:>20}" for f in SHOWN_FEATURES),
    ]
    for _tp, monitor in daemon.monitors():
        for key in sorted(monitor.key_states(), key=lambda k: k.endpoint):
            cells = []
            for name in SHOWN_FEATURES:
                s = key.streams.get(name)
                if s is None:
                    cells.append(f"{'-':>20}")
                    continue
                stat, thr = s.statistics().get("page_hinkley", (float("nan"), float("nan")))
                if s.learning:
                    cells.append(f"{'learning':>20}")
                else:
                    now, base = key.display(name, s.current), key.display(name, s.baseline)
                    values = f"{_short(now)}/{_short(base)}"
                    cells.append(f"{values:>12} {stat:3.0f}/{thr:<3.0f}")
            rows.append(f"{key.endpoint[:15]:<15} {key.events:>7,}  " + "  ".join(cells))
    rows.append("")
    rows.append(f"detections ({len(detections)}):")
    for d in detections[-12:]:
        rows.append(
            f"  offset {d.event_index:>6}  {d.endpoint:<14} {d.feature:<15} {d.detector:<12} "
            f"{_change(d)}{_onset(d)}"
        )
    return "\n".join(rows)


def _short(value: float) -> str:
    """A display value in a few characters: ``412``, ``1,030``, ``12.5``."""
    if value != value:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _change(d: Detection) -> str:
    """A detection's baseline and current value, both in the feature's own unit."""
    return (
        f"baseline {format_value(d.feature, d.baseline)} "
        f"→ current {format_value(d.feature, d.current)}"
    )


def _onset(d: Detection) -> str:
    n = d.events_since_onset
    return "" if n is None else f", began ~{n} event{'' if n == 1 else 's'} ago"


def demo(args: argparse.Namespace) -> int:
    lines, upgrade = default_demo_stream(seed=0, bad_line_every=997)
    if args.events:
        lines = lines[: args.events]
    tty = sys.stdout.isatty()
    # From the start, so that Ctrl-C while the broker starts is as clean as later on.
    stopping = threading.Event()
    daemons: list[Daemon] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        for daemon in daemons:
            daemon.request_exit()

    # SIGHUP too: a closed terminal must not leave the broker, in its own session, behind.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        with tempfile.TemporaryDirectory(prefix="driftmon-demo-") as tmp:
            try:
                broker = EmbeddedBroker(log_file=Path(tmp) / "broker.log", own_session=True)
                broker.start()
            except BrokerUnavailable as exc:
                print(f"driftmon demo: {exc}", file=sys.stderr)
                return 1
            try:
                return _run(args, lines, upgrade, broker, Path(tmp), tty, stopping, daemons)
            finally:
                broker.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    args: argparse.Namespace,
    lines: list[str],
    upgrade: Upgrade,
    broker: EmbeddedBroker,
    tmp: Path,
    tty: bool,
    stopping: threading.Event,
    daemons: list[Daemon],
) -> int:
    admin = KafkaAdminClient(bootstrap_servers=[broker.bootstrap])
    admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
    admin.close()
    port = free_port()
    settings = _settings(broker.bootstrap, str(tmp / "state"), port)
    logs.configure(settings.logging.level, settings.logging.format)
    daemon = Daemon(settings)
    daemons.append(daemon)
    if stopping.is_set():
        daemon.request_exit()
    detections: list[Detection] = []
    url = f"http://127.0.0.1:{port}/metrics"

    def seen(d: Detection) -> None:
        detections.append(d)
        if not tty:
            print(
                f"detection at offset {d.event_index}: {d.endpoint}/{d.model} "
                f"{d.feature} ({d.detector}) {_change(d)}{_onset(d)}",
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
    deadline = time.monotonic() + args.duration
    view = [""]

    def watch() -> None:
        done_at = None
        while not daemon.should_exit:
            consumed = sum(s.pipeline.accepted for s in list(daemon.partitions.values()))
            view[0] = _render(daemon, detections, sent[0], len(lines), url, upgrade, upgrade_at)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + view[0] + "\n")
                sys.stdout.flush()
            if not producer.is_alive() and done_at is None and consumed:
                done_at = time.monotonic()
            if time.monotonic() > deadline or (done_at and time.monotonic() - done_at > 8):
                daemon.request_exit()
            time.sleep(1.0)

    viewer = threading.Thread(target=watch, daemon=True)
    viewer.start()
    if not tty:
        print(f"driftmon demo: producing {len(lines):,} events; metrics at {url}", flush=True)
    # Shutdown order: the daemon (checkpoint, commit) while the broker is still up, then
    # the producer, then the broker, and only then the summary.
    code = daemon.run()
    stop.set()
    viewer.join(timeout=3)
    producer.join(timeout=15)
    broker.stop()
    if tty:
        print("\x1b[H\x1b[2J" + view[0])
    print(f"\n{len(detections)} detections; {_upgrade_line(upgrade, upgrade_at)}.", flush=True)
    return code
