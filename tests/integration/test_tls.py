"""The daemon over mutual TLS: driftmon's ``kafka.ssl_*`` settings against a real TLS
endpoint (tests/tls.py: a private CA and a TLS terminator in front of the broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from driftmon.demo.synthetic import Upgrade, generate
from driftmon.demo.tansu import EmbeddedBroker, free_port
from tests.support import (
    DaemonProcess,
    daemon_settings,
    http_get,
    metric,
    running,
    wait_for,
)
from tests.tls import OPENSSL, Pki, TlsTerminator, make_pki, other_ca

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        OPENSSL is None,
        reason="openssl not on PATH (it makes the test certificates): apt-get install openssl",
    ),
]

TOPIC = "llm-outputs"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, Pki]]:
    """A broker reachable only through TLS with client certificates: (bootstrap, pki)."""
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    with EmbeddedBroker(log_file=tmp_path / "broker.log", advertised_port=tls_port) as broker:
        terminator = TlsTerminator(pki, ("127.0.0.1", broker.port), port=tls_port).start()
        try:
            bootstrap = f"127.0.0.1:{tls_port}"
            admin = KafkaAdminClient(bootstrap_servers=[bootstrap], **client_tls(pki))
            admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
            admin.close()
            yield bootstrap, pki
        finally:
            terminator.stop()


def client_tls(pki: Pki) -> dict[str, Any]:
    return {
        "security_protocol": "SSL",
        "ssl_cafile": str(pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
    }


def test_the_daemon_consumes_and_produces_over_mutual_tls(tls_broker, tmp_path):
    bootstrap, pki = tls_broker
    upgrade = Upgrade(endpoint="sql-assistant", at_event=3000)
    lines = list(generate(6000, n_keys=4, seed=3, upgrade=upgrade, bad_line_every=200))
    producer = KafkaProducer(bootstrap_servers=[bootstrap], **client_tls(pki))
    for line in lines:
        producer.send(TOPIC, line.encode())
    producer.flush()
    producer.close()

    endpoints = {"sql-assistant": {"format": "json"}}
    cfg = daemon_settings(bootstrap, TOPIC, tmp_path / "state", "driftmon-tls", endpoints)
    cfg["kafka"].update(client_tls(pki))
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        daemon.wait_ready()
        wait_for(lambda: daemon.events_seen() >= len(lines), timeout=120, every=0.5)
        body = daemon.metrics()
        rejected = sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines()
            if line.startswith("driftmon_events_rejected_total{")
        )
        assert rejected == len(lines) // 200
        assert b"driftmon_drift_detections_total{" in body

    # Dead letters and detections went out through the same TLS settings.
    consumer = KafkaConsumer(
        "driftmon.dead-letter",
        "driftmon.detections",
        bootstrap_servers=[bootstrap],
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        **client_tls(pki),
    )
    topics = [record.topic for record in consumer]
    consumer.close()
    assert topics.count("driftmon.dead-letter") == len(lines) // 200
    assert topics.count("driftmon.detections") >= 1
    assert metric(body, "driftmon_produce_failed_total", topic="driftmon.detections") in (None, 0.0)


def test_an_untrusted_broker_certificate_is_refused_and_the_log_says_why(tls_broker, tmp_path):
    bootstrap, pki = tls_broker
    cfg = daemon_settings(bootstrap, TOPIC, tmp_path / "state", "driftmon-tls", {})
    cfg["kafka"].update(
        {
            **client_tls(pki),
            "ssl_cafile": str(other_ca(tmp_path / "other")),
            "bootstrap_timeout_seconds": 15,  # the default 60 s would only slow the test
        }
    )
    with running(DaemonProcess(tmp_path, cfg)) as daemon:
        # kafka-python's own error, which it logs only through stdlib logging, reaches
        # driftmon's log: the operator sees the cause, not just a bootstrap timeout.
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in daemon.log.read_text(), timeout=20)
        assert http_get(f"{daemon.url}/readyz")[0] == 503
        assert daemon.events_seen() == 0
        assert daemon.wait(timeout=60) == 1  # bootstrap gives up: a fatal error
    assert '"logger": "kafka.net' in daemon.log.read_text()
