"""Settings from the environment and the YAML file: the natural forms, and errors that name
the variable or the file and key with the expected form (SPEC §7)."""

from __future__ import annotations

import os

import pytest

from driftmon.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DRIFTMON_"):
            monkeypatch.delenv(name)


def test_comma_separated_list(monkeypatch):
    monkeypatch.setenv(
        "DRIFTMON_KAFKA__BOOTSTRAP_SERVERS", "kafka-0.kafka:9093, kafka-1.kafka:9093"
    )
    monkeypatch.setenv("DRIFTMON_KAFKA__TOPICS", "llm-outputs,chat-outputs")
    monkeypatch.setenv("DRIFTMON_DETECTORS__FEATURES", "output_chars,refusal")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == ["kafka-0.kafka:9093", "kafka-1.kafka:9093"]
    assert settings.kafka.topics == ["llm-outputs", "chat-outputs"]
    assert settings.detectors.features == ["output_chars", "refusal"]


def test_json_list(monkeypatch):
    monkeypatch.setenv("DRIFTMON_KAFKA__TOPICS", '["a,b", "c"]')
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__URLS", '["http://am-0:9093", "http://am-1:9093"]')
    settings = load_settings()
    assert settings.kafka.topics == ["a,b", "c"]
    assert settings.alertmanager.urls == ["http://am-0:9093", "http://am-1:9093"]


def test_single_value_is_a_one_element_list(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__URLS", "http://alertmanager.monitoring:9093")
    assert load_settings().alertmanager.urls == ["http://alertmanager.monitoring:9093"]


def test_empty_value_is_an_empty_list(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__URLS", "")
    assert load_settings().alertmanager.urls == []


def test_json_map(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__STATIC_LABELS", '{"team": "llm", "env": "a=b"}')
    assert load_settings().alertmanager.static_labels == {"team": "llm", "env": "a=b"}


def test_key_value_map(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__STATIC_LABELS", "team=llm-platform, env=prod")
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__SEVERITY", "refusal=page,json_valid=page")
    settings = load_settings()
    assert settings.alertmanager.static_labels == {"team": "llm-platform", "env": "prod"}
    assert settings.alertmanager.severity == {"refusal": "page", "json_valid": "page"}


def test_key_value_map_inside_a_map_of_sections(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ENDPOINTS__SQL__FORMAT", "json")
    monkeypatch.setenv("DRIFTMON_ENDPOINTS__SQL__MUST_NOT_MATCH", r"no_apology=(?i)\bsorry\b")
    contract = load_settings().endpoints["sql"]
    assert contract.format == "json"
    assert contract.must_not_match == {"no_apology": r"(?i)\bsorry\b"}


def test_map_entry_without_equals_names_the_variable_and_form(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__STATIC_LABELS", "team=llm,prod")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "DRIFTMON_ALERTMANAGER__STATIC_LABELS" in message
    assert "'prod' is not k=v" in message
    assert "k=v pairs (k1=v1,k2=v2) or a JSON object" in message


def test_broken_json_list_names_the_variable_and_form(monkeypatch):
    monkeypatch.setenv("DRIFTMON_KAFKA__TOPICS", '["llm-outputs",')
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith("DRIFTMON_KAFKA__TOPICS: ")
    assert "a comma-separated list (a,b) or a JSON list" in message
    assert "not valid JSON" in message


def test_json_of_the_wrong_shape_names_the_variable(monkeypatch):
    monkeypatch.setenv("DRIFTMON_ALERTMANAGER__SEVERITY", '["page"]')
    with pytest.raises(ConfigError, match=r"DRIFTMON_ALERTMANAGER__SEVERITY: .*got a JSON list"):
        load_settings()


def test_broken_json_section_names_the_variable(monkeypatch):
    monkeypatch.setenv("DRIFTMON_KAFKA", '{"topics": ["a"]')
    with pytest.raises(ConfigError, match=r"^DRIFTMON_KAFKA: expected a JSON object"):
        load_settings()


def test_wrong_type_names_the_variable(monkeypatch):
    monkeypatch.setenv("DRIFTMON_KAFKA__MAX_POLL_RECORDS", "lots")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "DRIFTMON_KAFKA__MAX_POLL_RECORDS (kafka.max_poll_records): " in message
    assert "valid integer" in message


def test_wrong_type_inside_a_json_section_names_the_variable_and_json_form(monkeypatch):
    monkeypatch.setenv("DRIFTMON_KAFKA", '{"topics": 5}')
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "DRIFTMON_KAFKA (kafka.topics): Input should be a valid list (expected a JSON list)" in (
        str(err.value)
    )


def test_broken_yaml_names_its_path(tmp_path):
    config = tmp_path / "driftmon.yaml"
    config.write_text("kafka:\n  topics: [llm-outputs\n  group_id: driftmon\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    message = str(err.value)
    assert message.startswith(f"{config}: not valid YAML")
    assert f'in "{config}", line 2' in message
    assert "<unicode string>" not in message


def test_broken_yaml_from_driftmon_config_names_its_path(tmp_path, monkeypatch):
    config = tmp_path / "from-env.yaml"
    config.write_text("logging: {level: info\n")
    monkeypatch.setenv("DRIFTMON_CONFIG", str(config))
    with pytest.raises(ConfigError, match=f"^{config}: not valid YAML"):
        load_settings()


def test_wrong_type_in_yaml_names_the_file_and_key(tmp_path):
    config = tmp_path / "driftmon.yaml"
    config.write_text("kafka:\n  topics: llm-outputs\n  max_poll_records: lots\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    message = str(err.value)
    assert f"{config}: kafka.topics: Input should be a valid list (expected a YAML list)" in (
        message
    )
    assert f"{config}: kafka.max_poll_records: Input should be a valid integer" in message


def test_yaml_that_is_not_a_mapping_names_its_path(tmp_path):
    config = tmp_path / "driftmon.yaml"
    config.write_text("- kafka\n- alertmanager\n")
    with pytest.raises(ConfigError, match=f"^{config}: the top level must be a mapping"):
        load_settings(config)


def test_environment_overrides_yaml_and_is_named_when_wrong(tmp_path, monkeypatch):
    config = tmp_path / "driftmon.yaml"
    config.write_text("kafka:\n  topics: [from-yaml]\n  max_poll_records: 10\n")
    monkeypatch.setenv("DRIFTMON_KAFKA__TOPICS", "from-env-a,from-env-b")
    assert load_settings(config).kafka.topics == ["from-env-a", "from-env-b"]
    monkeypatch.setenv("DRIFTMON_KAFKA__MAX_POLL_RECORDS", "0")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "DRIFTMON_KAFKA__MAX_POLL_RECORDS (kafka.max_poll_records)" in str(err.value)
    assert str(config) not in str(err.value)
