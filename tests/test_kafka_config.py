"""Security settings reach kafka-python under the names it expects (pure mapping), and
where an undecodable batch ends.

No SASL/TLS broker runs here (tansu's user store did not work with memory storage), so
the end-to-end path is the README's cluster instructions, not a test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from prometheus_client import CollectorRegistry

from driftmon.kafka import _batch_end, client_config, skip_undecodable
from driftmon.metrics import Metrics
from driftmon.settings import ConfigError, KafkaSettings, load_settings


def test_plaintext_has_no_security_keys():
    cfg = client_config(KafkaSettings(bootstrap_servers="a:9092, b:9092"))
    assert cfg["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert cfg["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl_", "ssl_")) for k in cfg)


def test_sasl_scram_over_tls_with_password_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = client_config(
        KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="driftmon",
            sasl_password_file=secret,
            ssl_cafile=ca,
        )
    )
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl_plain_username"] == "driftmon"
    assert cfg["sasl_plain_password"] == "s3cret"
    assert cfg["ssl_cafile"] == str(ca)
    assert cfg["ssl_check_hostname"] is True


def test_sasl_without_mechanism_is_a_config_error(monkeypatch):
    monkeypatch.delenv("DRIFTMON_CONFIG", raising=False)
    monkeypatch.setenv("DRIFTMON_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        load_settings()


# -- where an undecodable batch ends (poll_records; the real-broker tests are in
# tests/integration/test_real_inputs.py) --------------------------------------------
def _batches(*sizes: int) -> bytes:
    """Consecutive lz4 record batches (v2) of ``sizes`` records, offsets from 0."""
    out, offset = b"", 0
    for n in sizes:
        builder = MemoryRecordsBuilder(
            magic=2, compression_type=3, batch_size=1 << 20, offset=offset
        )
        for i in range(n):
            builder.append(timestamp=None, key=None, value=b"v%d" % i, headers=[])
        builder.close()
        out += bytes(builder.buffer())
        offset += n
    return out


def test_a_batch_ends_where_its_header_says_without_decompressing(monkeypatch):
    raw = _batches(3, 5, 2)
    monkeypatch.setattr("kafka.record.default_records.lz4_decode", _never)
    records = MemoryRecords(raw)
    assert [_batch_end(records, o) for o in (0, 2, 3, 7, 8, 9)] == [3, 3, 8, 8, 10, 10]
    assert _batch_end(records, 10) is None  # past the fetched data


def test_an_unreadable_header_gives_no_end():
    assert _batch_end(MemoryRecords(b"\x00" * 12 + b"\x00\x00\x00\x05garbage"), 0) is None


def test_a_skipped_batch_is_counted_and_its_partition_moves_past_it():
    registry = CollectorRegistry()
    states = {TopicPartition("llm", 0): SimpleNamespace(next_offset=5, events_since_checkpoint=0)}
    skip = skip_undecodable(Metrics(registry), states)
    skip("llm", 0, 5, 10)
    skip("llm", 1, 0, 3)  # not (or no longer) ours: counted only
    labels = {"topic": "llm", "action": "skip"}
    assert registry.get_sample_value("driftmon_messages_undecodable_total", labels) == 2.0
    assert states[TopicPartition("llm", 0)].next_offset == 10  # the checkpoint commits 10
    # ... even when no record follows: the partition is due in the next checkpoint.
    assert states[TopicPartition("llm", 0)].events_since_checkpoint == 1


def _never(data: bytes) -> bytes:
    raise AssertionError("the header alone must say where the batch ends")
