"""Real components for integration tests: Alertmanager, the daemon as a subprocess, Kafka
helpers. Everything listens on 127.0.0.1 on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon.demo.tansu import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
needs_alertmanager = pytest.mark.skipif(
    not Path(ALERTMANAGER).exists(),
    reason="prometheus-alertmanager not installed: apt-get install prometheus-alertmanager "
    "(.ci/run installs it)",
)


# SPEC §5: every metric name driftmon promises. Dashboards and rules may use only these.
SPEC_METRICS = (
    "driftmon_events_total",
    "driftmon_events_rejected_total",
    "driftmon_feature_value",
    "driftmon_feature_baseline",
    "driftmon_detector_statistic",
    "driftmon_detector_threshold",
    "driftmon_drift_active",
    "driftmon_drift_detections_total",
    "driftmon_last_detection_timestamp_seconds",
    "driftmon_keys",
    "driftmon_keys_evicted_total",
    "driftmon_embeddings_total",
    "driftmon_embedding_duration_seconds",
    "driftmon_embedding_sample_ratio",
    "driftmon_consumer_lag",
    "driftmon_alerts_sent_total",
    # SPEC §7
    "driftmon_transition_verdict",
    # SPEC §7 asks that metrics show a drift's cause; the name is the project's, listed
    # as a contract addition in docs/spec.md.
    "driftmon_input_drift_active",
)


def daemon_settings(
    bootstrap: str,
    topic: str,
    state_dir: Path,
    group_id: str,
    endpoints: dict[str, Any],
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """Settings for a test daemon: reads ``topic`` from the start, joins a group fast,
    checkpoints often, embeddings off; ``sections`` override per section."""
    base: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": [bootstrap],
            "topics": [topic],
            "group_id": group_id,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "max_poll_records": 500,
        },
        "state": {"dir": str(state_dir), "checkpoint_every_events": 1000},
        "endpoints": endpoints,
        "logging": {"level": "info", "format": "json"},
        "embeddings": {"enabled": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Alertmanager:
    """A real Alertmanager process with a null receiver."""

    NULL_RECEIVER: Final = (
        "route:\n  receiver: 'null'\n  group_wait: 1s\n  group_interval: 1s\n"
        "receivers:\n  - name: 'null'\n"
    )

    def __init__(self, workdir: Path, port: int | None = None, config: str | None = None) -> None:
        """``config``: the alertmanager.yml text (default: one null receiver)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config = config or self.NULL_RECEIVER
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Alertmanager:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "alertmanager.yml"
        cfg.write_text(self.config)
        self.proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={cfg}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: http_get(f"{self.url}/-/ready")[0] == 200, timeout=20)
        return self

    def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        q = "?active=true&silenced=false&inhibited=false" if active_only else ""
        status, body = http_get(f"{self.url}/api/v2/alerts{q}")
        assert status == 200, status
        alerts: list[dict[str, Any]] = json.loads(body)
        return alerts

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(
    bootstrap: str,
    topic: str,
    lines: list[str] | list[bytes],
    key: Callable[[bytes], bytes | None] | None = None,
    partition: int | None = None,
) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5, acks=1)
    for line in lines:
        value = line.encode() if isinstance(line, str) else line
        producer.send(topic, value=value, key=key(value) if key else None, partition=partition)
    producer.flush()
    producer.close()


def consume_all(bootstrap: str, topic: str, idle: float = 3.0) -> list[Any]:
    """Every record of ``topic`` (all partitions), read without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        # tansu can report an end offset short of the real end by up to one producer
        # batch, so read until a poll past the reported end comes back empty.
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=int(idle * 1000))
            for records in batch.values():
                out.extend(records)
            if not batch and all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
        return out
    finally:
        consumer.close()


def metric(body: bytes, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text exposition."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.decode().split("\n"):
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if "{" in series:
            mname, rest = series.split("{", 1)
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest != "}" else ""
        else:
            mname, got = series, ""
        if mname == name and got == want:
            return float(value)
    return None


class DaemonProcess:
    """``driftmon run`` as a real subprocess with its own config file."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.workdir = workdir
        self.metrics_port = settings.setdefault("metrics", {}).setdefault("port", free_port())
        settings["metrics"].setdefault("host", "127.0.0.1")
        self.config = workdir / "driftmon.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self) -> DaemonProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTMON_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "driftmon", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return http_get(f"{self.url}/readyz")[0] == 200

        wait_for(ready, timeout=timeout, every=0.2)

    def metrics(self) -> bytes:
        # A scrape during a backlog may queue behind the throttled renderer: be patient.
        status, body = http_get(f"{self.url}/metrics", timeout=15.0)
        assert status == 200, self.tail()
        return body

    def events_seen(self) -> float:
        """Accepted plus rejected events, from /metrics."""
        body = self.metrics()
        total = 0.0
        for line in body.decode().split("\n"):
            if line.startswith(("driftmon_events_total{", "driftmon_events_rejected_total{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(proc: DaemonProcess) -> Iterator[DaemonProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def skip_without_model(reason: str) -> None:
    """Skip a test that needs the packaged embedding model, or fail it where the model
    must be there (CI sets ``DRIFTMON_REQUIRE_EMBEDDINGS=1``: a silent skip would hide a
    broken install)."""
    if os.environ.get("DRIFTMON_REQUIRE_EMBEDDINGS") == "1":
        pytest.fail(f"DRIFTMON_REQUIRE_EMBEDDINGS is set but {reason}")
    pytest.skip(reason)
