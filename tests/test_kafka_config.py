"""Security settings reach kafka-python under the names it expects (pure mapping).

No SASL/TLS broker runs here (tansu's user store did not work with memory storage), so
the end-to-end path is the README's cluster instructions, not a test."""

from __future__ import annotations

import pytest

from driftmon.kafka import client_config
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
