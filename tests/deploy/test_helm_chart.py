"""The Helm chart, checked without the helm CLI: schema, lint, template text, copies, docs."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from driftmon import settings as driftmon_settings
from tests.deploy import helm_values, k8s_fields
from tests.deploy.conftest import (
    CHART,
    DASHBOARD,
    REPO,
    RULES,
    YAMLLINT_CONFIG,
    require_tool,
    run,
)

SCHEMA_PATH = CHART / "values.schema.json"
TEMPLATES = CHART / "templates"
MANIFESTS = sorted(p for p in TEMPLATES.glob("*.yaml"))
# Secret settings the chart refuses in the ConfigMap (they come from Secrets).
SECRET_FIELDS = {
    "kafka": {"sasl_password"},
    "alertmanager": {"password", "bearer_token"},
}


def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return data


def validator() -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(schema())
    return jsonschema.Draft7Validator(schema())


def merged_examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, helm_values.merge(helm_values.defaults(), helm_values.load(path)))
        for path in helm_values.examples()
    ]


def errors(values: dict[str, Any]) -> list[str]:
    return [e.message for e in validator().iter_errors(values)]


# --- Chart.yaml -------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = helm_values.load(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "driftmon"
    assert chart["type"] == "application"
    assert chart["appVersion"] == "0.1.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])


def test_one_version_everywhere() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert helm_values.load(CHART / "Chart.yaml")["appVersion"] == project
    label = re.search(
        r'org\.opencontainers\.image\.version="([^"]+)"', (REPO / "Dockerfile").read_text()
    )
    assert label and label.group(1) == project


# --- values.schema.json -----------------------------------------------------


def test_schema_is_strict_at_every_level() -> None:
    loose = []

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        if "properties" in node and node.get("additionalProperties") is not False:
            loose.append(where)
        for key, child in node.get("properties", {}).items():
            walk(child, f"{where}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}.*")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema(), "$")
    # extraEnv items: Kubernetes EnvVar objects carry value/valueFrom beyond `name`.
    assert loose == ["$.extraEnv[]"], f"objects without additionalProperties: false: {loose}"


def test_values_yaml_validates() -> None:
    assert errors(helm_values.defaults()) == []


@pytest.mark.parametrize(("name", "values"), merged_examples(), ids=lambda v: str(v)[:40])
def test_examples_validate(name: str, values: dict[str, Any]) -> None:
    assert errors(values) == [], name


BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"replicas": 1},
    "two replicas": {"replicaCount": 2},
    "two replicas with file state": {"replicaCount": 2, "config": {"state": {"backend": "file"}}},
    "KEDA with file state": {"keda": {"enabled": True}},
    "state backend not an enum value": {"config": {"state": {"backend": "redis"}}},
    "KEDA setting misspelt": {"keda": {"enabled": False, "lagTreshold": 5}},
    "replicas as a string": {"replicaCount": "1"},
    "pull policy not an enum value": {"image": {"pullPolicy": "Sometimes"}},
    "digest not a sha256": {"image": {"digest": "latest"}},
    "root user": {"podSecurityContext": {"runAsUser": 0}},
    "SASL password in the ConfigMap": {"config": {"kafka": {"sasl_password": "hunter2"}}},
    "bearer token in the ConfigMap": {"config": {"alertmanager": {"bearer_token": "t"}}},
    "misspelt config key": {"config": {"kafka": {"bootstrap_server": ["k:9092"]}}},
    "unknown config section": {"config": {"kafk": {}}},
    "metrics port 0": {"config": {"metrics": {"port": 0}}},
    "relative state dir": {"config": {"state": {"dir": "state"}}},
    "warm-up below the minimum": {"config": {"detectors": {"warmup_events": 10}}},
    "offset reset not an enum value": {"config": {"kafka": {"auto_offset_reset": "oldest"}}},
    "check name not snake_case": {
        "config": {"endpoints": {"chat": {"must_match": {"Has-Dash": "x"}}}}
    },
    "unknown contract key": {"config": {"endpoints": {"chat": {"fromat": "json"}}}},
    "PVC size without a unit pattern": {"persistence": {"size": "lots"}},
    "secret key empty": {"secrets": {"kafkaSaslPassword": {"existingSecret": "s", "key": ""}}},
    "scrape interval not a duration": {"serviceMonitor": {"interval": "30 seconds"}},
    "dashboard flag as a string": {"dashboard": {"enabled": "yes"}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected(case: str) -> None:
    values = helm_values.merge(helm_values.defaults(), BAD_VALUES[case])
    assert errors(values), f"{case}: accepted"


SCALE_OUT: dict[str, dict[str, Any]] = {
    "three replicas, state in kafka": {
        "replicaCount": 3,
        "config": {"state": {"backend": "kafka", "topic": "team.driftmon.state"}},
    },
    "KEDA, state in kafka": {"keda": {"enabled": True}, "config": {"state": {"backend": "kafka"}}},
}


@pytest.mark.parametrize("case", sorted(SCALE_OUT))
def test_several_replicas_are_accepted_with_state_in_kafka(case: str) -> None:
    values = helm_values.merge(helm_values.defaults(), SCALE_OUT[case])
    assert errors(values) == []
    loaded = driftmon_settings.Settings(**values["config"])
    assert loaded.state.backend == "kafka"


def test_the_templates_refuse_several_replicas_with_file_state() -> None:
    deployment = text("deployment.yaml")
    assert re.search(r"gt \(int \.Values\.replicaCount\) 1\) \(not \$kafkaState\)", deployment)
    assert 'fail "replicaCount > 1 needs config.state.backend: kafka' in deployment
    assert "type: RollingUpdate" in deployment and "type: Recreate" in deployment
    assert "minAvailable: 1" in text("poddisruptionbudget.yaml")
    assert "kind: ScaledObject" in text("scaledobject.yaml")
    assert helm_values.defaults()["keda"]["enabled"] is False


def test_required_keys_cannot_be_removed() -> None:
    # `--set config.state=null` deletes the key in Helm; templates read it.
    values = helm_values.merge(helm_values.defaults(), {"config": {"state": None}})
    assert errors(values)


def test_check_jsonschema_cli(tmp_path: Path) -> None:
    cli = require_tool("check-jsonschema", "pip install check-jsonschema")
    meta = run([cli, "--check-metaschema", str(SCHEMA_PATH)])
    assert meta.returncode == 0, meta.stdout + meta.stderr

    files = [CHART / "values.yaml"]
    for name, values in merged_examples():
        path = tmp_path / f"merged-{name}"
        path.write_text(yaml.safe_dump(values))
        files.append(path)
    good = run([cli, "--schemafile", str(SCHEMA_PATH), *map(str, files)])
    assert good.returncode == 0, good.stdout + good.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(helm_values.merge(helm_values.defaults(), BAD_VALUES["two replicas"]))
    )
    rejected = run([cli, "--schemafile", str(SCHEMA_PATH), str(bad)])
    assert rejected.returncode != 0
    # More than one replica is refused through what it needs: state in Kafka.
    assert "config.state.backend" in rejected.stdout + rejected.stderr


# --- config: the chart's schema and driftmon's settings model agree ---------


def test_config_schema_lists_the_settings_keys() -> None:
    config = schema()["properties"]["config"]
    settings_cls = driftmon_settings.Settings
    assert set(config["properties"]) == set(settings_cls.model_fields)
    for section, field in settings_cls.model_fields.items():
        if section == "endpoints":
            model: Any = driftmon_settings.EndpointContract
            props = config["properties"]["endpoints"]["additionalProperties"]["properties"]
        else:
            model = field.annotation
            props = config["properties"][section]["properties"]
        expected = set(model.model_fields) - SECRET_FIELDS.get(section, set())
        assert set(props) == expected, (
            f"config.{section}: schema and driftmon/settings.py differ: "
            f"only in schema {set(props) - expected}, only in settings {expected - set(props)}"
        )


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DRIFTMON_"):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("name", "values"),
    [("values.yaml", helm_values.defaults()), *merged_examples()],
    ids=lambda v: str(v)[:40],
)
def test_config_is_accepted_by_driftmon(name: str, values: dict[str, Any]) -> None:
    loaded = driftmon_settings.Settings(**values["config"])
    assert str(loaded.state.dir) == values["config"]["state"]["dir"], name
    assert loaded.metrics.port == values["config"]["metrics"]["port"]
    assert loaded.metrics.host == "0.0.0.0", "probes and scrapes come from outside the pod"


# --- yamllint ---------------------------------------------------------------


def test_yamllint() -> None:
    yamllint = require_tool("yamllint", "pip install yamllint")
    files = [
        CHART / "Chart.yaml",
        CHART / "values.yaml",
        *helm_values.examples(),
        RULES,
        REPO / "config" / "prometheus" / "prometheus.example.yml",
        *sorted((REPO / "config" / "grafana" / "provisioning").rglob("*.yaml")),
    ]
    result = run([yamllint, "--strict", "-f", "parsable", "-d", YAMLLINT_CONFIG, *map(str, files)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# --- copies of the monitoring files -----------------------------------------


def test_rules_copy_is_identical() -> None:
    assert (CHART / "files" / "driftmon-rules.yaml").read_bytes() == RULES.read_bytes(), (
        "cp config/prometheus/driftmon-rules.yaml helm/driftmon/files/"
    )


def test_dashboard_copy_is_identical() -> None:
    assert (CHART / "files" / "driftmon.json").read_bytes() == DASHBOARD.read_bytes(), (
        "cp config/grafana/driftmon.json helm/driftmon/files/"
    )


# --- template text ----------------------------------------------------------


def text(name: str) -> str:
    return (TEMPLATES / name).read_text()


def test_expected_templates_exist() -> None:
    names = {p.name for p in TEMPLATES.iterdir()}
    assert names >= {
        "_helpers.tpl",
        "NOTES.txt",
        "deployment.yaml",
        "configmap.yaml",
        "service.yaml",
        "pvc.yaml",
        "serviceaccount.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
        "dashboard-configmap.yaml",
    }


@pytest.mark.parametrize("path", [*MANIFESTS, TEMPLATES / "_helpers.tpl", TEMPLATES / "NOTES.txt"])
def test_template_actions_balanced(path: Path) -> None:
    body = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", path.read_text(), flags=re.S)
    assert body.count("{{") == body.count("}}"), path.name
    opened = len(re.findall(r"\{\{-?\s*(?:if|with|range|define|block)\b", body))
    closed = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", body))
    assert opened == closed, f"{path.name}: {opened} blocks opened, {closed} closed"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_uses_the_labels_helper(path: Path) -> None:
    body = path.read_text()
    assert 'include "driftmon.labels" .' in body
    assert "namespace:" in body


def test_helpers_define_the_standard_labels() -> None:
    helpers = text("_helpers.tpl")
    for label in ("name", "instance", "version", "component", "part-of", "managed-by"):
        assert f"app.kubernetes.io/{label}:" in helpers, label
    selector = re.search(r'define "driftmon.selectorLabels".*?end', helpers, re.S)
    assert selector and "version" not in selector.group(0), "selector labels must be immutable"


def test_deployment_security_context() -> None:
    deployment = text("deployment.yaml")
    for line in (
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "privileged: false",
        "type: RuntimeDefault",
        "automountServiceAccountToken: false",
    ):
        assert line in deployment, line
    assert re.search(r"capabilities:\s*\n\s*drop:\s*\n\s*- ALL", deployment)
    assert deployment.count("type: RuntimeDefault") == 2, "pod and container seccompProfile"
    assert helm_values.defaults()["podSecurityContext"]["runAsUser"] == 10001


def test_deployment_probes() -> None:
    deployment = text("deployment.yaml")
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        block = re.search(
            rf"{probe}:\s*\n\s*httpGet:\s*\n\s*path: (\S+)\s*\n\s*port: (\S+)", deployment
        )
        assert block, probe
        assert block.group(1) == path and block.group(2) == "metrics", probe
    assert "containerPort: {{ .Values.config.metrics.port }}" in deployment
    assert helm_values.defaults()["config"]["metrics"]["port"] == 9308


def test_deployment_config_secrets_and_volumes() -> None:
    deployment = text("deployment.yaml")
    assert (
        'checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}'
        in deployment
    )
    assert re.search(r"name: DRIFTMON_CONFIG\s*\n\s*value: /etc/driftmon/driftmon.yaml", deployment)
    assert "mountPath: /etc/driftmon" in deployment
    for env in (
        "DRIFTMON_KAFKA__SASL_PASSWORD",
        "DRIFTMON_ALERTMANAGER__BEARER_TOKEN",
        "DRIFTMON_ALERTMANAGER__PASSWORD",
    ):
        assert re.search(rf"name: {env}\s*\n\s*valueFrom:\s*\n\s*secretKeyRef:", deployment), env
    assert "persistentVolumeClaim:" in deployment and "emptyDir:" in deployment
    assert "mountPath: /tmp" in deployment
    assert "type: Recreate" in deployment
    assert "replicas: {{ .Values.replicaCount }}" in deployment
    assert helm_values.defaults()["replicaCount"] == 1
    assert "toYaml .Values.config" in text("configmap.yaml")


def test_optional_monitoring_resources() -> None:
    servicemonitor = text("servicemonitor.yaml")
    assert "apiVersion: monitoring.coreos.com/v1" in servicemonitor
    assert "kind: ServiceMonitor" in servicemonitor
    assert servicemonitor.lstrip().startswith("{{- if .Values.serviceMonitor.enabled }}")
    rule = text("prometheusrule.yaml")
    assert rule.lstrip().startswith("{{- if .Values.prometheusRule.enabled }}")
    assert '.Files.Get "files/driftmon-rules.yaml"' in rule
    dashboard = text("dashboard-configmap.yaml")
    assert dashboard.lstrip().startswith("{{- if .Values.dashboard.enabled }}")
    assert '.Files.Get "files/driftmon.json"' in dashboard
    assert helm_values.defaults()["dashboard"]["labels"] == {"grafana_dashboard": "1"}


def _values_paths() -> list[tuple[str, str]]:
    found = []
    for path in sorted(TEMPLATES.iterdir()):
        for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", path.read_text()):
            found.append((path.name, ref.lstrip(".")))
    return sorted(set(found))


@pytest.mark.parametrize(("template", "ref"), _values_paths())
def test_values_path_exists(template: str, ref: str) -> None:
    node: Any = helm_values.defaults()
    for part in ref.split("."):
        assert isinstance(node, dict) and part in node, (
            f"{template}: .Values.{ref} not in values.yaml"
        )
        node = node[part]


# --- README -----------------------------------------------------------------


def test_readme_documents_sidecars_and_validation() -> None:
    readme = (CHART / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)]
    native = [b for b in blocks if "initContainers" in b]
    assert native, "no native sidecar snippet"
    (sidecar,) = native[0]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert "restartPolicy: Always" in readme and "1.29" in readme
    assert any("containers" in b for b in blocks), "no classic sidecar snippet"
    assert "## What was and was not validated" in readme
    assert "Not validated here" in readme
    for key in ("persistence.enabled", "secrets.kafkaSaslPassword", "replicaCount"):
        assert key in readme, key


def test_readme_sidecar_snippets_use_real_kubernetes_fields() -> None:
    pytest.importorskip(
        "kubernetes", reason="pip install kubernetes (its generated models give the field names)"
    )
    readme = (CHART / "README.md").read_text()
    snippets = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)]
    checked = 0
    for snippet in snippets:
        for key in ("containers", "initContainers", "volumes"):
            if key in snippet:
                item_type = "V1Volume" if key == "volumes" else "V1Container"
                assert k8s_fields.problems(snippet[key], f"list[{item_type}]", key) == []
                checked += 1
    assert checked == 3, "expected containers, volumes and initContainers snippets"
