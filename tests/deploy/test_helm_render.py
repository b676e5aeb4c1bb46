"""The Helm chart rendered by a real helm v3 binary (skipped, with the reason, without one).

helm is found through $HELM or PATH. Nothing here talks to a cluster: `helm lint` and
`helm template` only.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftmon import settings as driftmon_settings
from tests.deploy import helm_values, k8s_fields
from tests.deploy.conftest import CHART, DASHBOARD, RULES, require_tool, run

HELM_HOW = (
    "set HELM=/path/to/helm or put a helm v3 binary on PATH; without it the chart is "
    "checked as text only (test_helm_chart.py) and its templates are not rendered"
)
NAMESPACE = "llm"
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
}
ALL_OPTIONAL = [
    "--set",
    "serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true",
]


@functools.cache
def helm() -> str:
    binary = require_tool("helm", HELM_HOW, env_var="HELM")
    version = run([binary, "version", "--short"])
    if not version.stdout.startswith("v3."):
        pytest.skip(f"{binary} is not helm v3 ({version.stdout.strip() or version.stderr.strip()})")
    return binary


def template(*args: str) -> list[dict[str, Any]]:
    result = run([helm(), "template", "rel", str(CHART), "--namespace", NAMESPACE, *args])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """driftmon's own ConfigMap (the dashboard, when enabled, is another)."""
    (found,) = [d for d in docs if d["kind"] == "ConfigMap" and "driftmon.yaml" in d["data"]]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def volumes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    return {v["name"]: v for v in spec["volumes"]}


def mounts(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(config_map(docs)["data"]["driftmon.yaml"])
    return data


VALUES_FILES = [None, *helm_values.examples()]


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values_file: Path | None) -> None:
    args = ["-f", str(values_file)] if values_file else []
    result = run([helm(), "lint", "--strict", str(CHART), *args])
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_objects_and_labels() -> None:
    docs = template()
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]
    for doc in docs:
        meta = doc["metadata"]
        assert meta["namespace"] == NAMESPACE, doc["kind"]
        assert set(meta["labels"]) >= STANDARD_LABELS, doc["kind"]
        assert meta["labels"]["app.kubernetes.io/version"] == "0.1.0"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_deployment_shape() -> None:
    docs = template()
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/config"])
    assert pod["spec"]["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False

    c = container(docs)
    assert c["image"] == "ghcr.io/driftmon/driftmon:0.1.0"
    assert c["args"] == ["run"]
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [9308]

    service = one(docs, "Service")
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9308, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_security_contexts() -> None:
    pod = one(template(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["containers"][0]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_openshift_ids_can_be_left_to_the_platform() -> None:
    docs = template(
        "--set",
        "podSecurityContext.runAsUser=null,podSecurityContext.runAsGroup=null,"
        "podSecurityContext.fsGroup=null",
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "runAsUser" not in pod["containers"][0]["securityContext"]


def test_probes() -> None:
    c = container(template())
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120


def test_config_volume_state_and_tmp() -> None:
    docs = template()
    config_path = Path(env(docs)["DRIFTMON_CONFIG"])
    assert mounts(docs)["config"] == str(config_path.parent)
    assert volumes(docs)["config"]["configMap"]["name"] == config_map(docs)["metadata"]["name"]
    assert config_path.name in config_map(docs)["data"]
    assert mounts(docs)["state"] == rendered_config(docs)["state"]["dir"] == "/var/lib/driftmon"
    claim = volumes(docs)["state"]["persistentVolumeClaim"]["claimName"]
    assert claim == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert mounts(docs)["tmp"] == "/tmp"
    assert "emptyDir" in volumes(docs)["tmp"]
    assert env(docs)["OMP_NUM_THREADS"] == "1"


def test_emptydir_state_without_persistence() -> None:
    docs = template("--set", "persistence.enabled=false")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert volumes(docs)["state"] == {"name": "state", "emptyDir": {"sizeLimit": "1Gi"}}


def test_existing_claim_is_used_not_created() -> None:
    docs = template("--set", "persistence.existingClaim=driftmon-old-state")
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert volumes(docs)["state"]["persistentVolumeClaim"]["claimName"] == "driftmon-old-state"


def _checksum(*args: str) -> str:
    deployment = one(template(*args), "Deployment")
    value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def test_checksum_follows_the_config_only() -> None:
    base = _checksum()
    assert _checksum("--set", "config.limits.max_keys=5") != base
    assert _checksum("--set", "resources.limits.memory=3Gi") == base


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("DRIFTMON_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name if p else "defaults")
def test_rendered_config_loads_in_driftmon(
    values_file: Path | None, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = template(*(["-f", str(values_file)] if values_file else []))
    path = tmp_path / "driftmon.yaml"
    path.write_text(config_map(docs)["data"]["driftmon.yaml"])
    loaded = driftmon_settings.load_settings(path)
    assert loaded.metrics.port == container(docs)["ports"][0]["containerPort"]
    assert str(loaded.state.dir) == mounts(docs)["state"]


def test_secrets_reach_driftmon_as_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    docs = template("-f", str(CHART / "examples" / "values-sasl.yaml"))
    variables = env(docs)
    assert variables["DRIFTMON_KAFKA__SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "driftmon-kafka", "key": "sasl-password"}
    }
    assert variables["DRIFTMON_ALERTMANAGER__BEARER_TOKEN"] == {
        "secretKeyRef": {"name": "driftmon-alertmanager", "key": "bearer-token"}
    }
    assert "DRIFTMON_ALERTMANAGER__PASSWORD" not in variables
    assert "sasl_password" not in config_map(docs)["data"]["driftmon.yaml"]
    assert mounts(docs)["kafka-ca"] == "/etc/driftmon/kafka-ca"

    # What the kubelet does: the ConfigMap as a file, the Secret values as env.
    path = tmp_path / "driftmon.yaml"
    path.write_text(config_map(docs)["data"]["driftmon.yaml"])
    clean_env.setenv("DRIFTMON_CONFIG", variables["DRIFTMON_CONFIG"])
    clean_env.setenv("DRIFTMON_KAFKA__SASL_PASSWORD", "s3cret")
    clean_env.setenv("DRIFTMON_ALERTMANAGER__BEARER_TOKEN", "t0ken")
    loaded = driftmon_settings.load_settings(path)
    assert loaded.kafka.security_protocol == "SASL_SSL"  # from the file
    assert loaded.kafka.sasl_username == "driftmon"
    assert loaded.kafka.password() == "s3cret"  # from the env, merged into the same section
    assert loaded.alertmanager.token() == "t0ken"
    assert loaded.alertmanager.urls == ["https://alertmanager.monitoring.svc:9093"]
    masked = driftmon_settings.masked(loaded)
    assert masked["kafka"]["sasl_password"] == "***"
    assert "s3cret" not in json.dumps(masked)


def test_optional_monitoring_resources() -> None:
    docs = template(*ALL_OPTIONAL)
    service = one(docs, "Service")

    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # DriftmonDown finds the scrape job (named after the Service) by this regex.
    assert re.fullmatch(r".*driftmon.*", service["metadata"]["name"])

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())

    dashboards = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]
    (dashboard,) = dashboards
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["driftmon.json"]) == json.loads(DASHBOARD.read_text())


def test_production_example() -> None:
    docs = template("-f", str(CHART / "examples" / "values-production.yaml"))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("ConfigMap") == 2
    assert {"ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim"} <= set(kinds)
    dashboard = next(d for d in docs if d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["namespace"] == "monitoring"
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert pvc["spec"]["storageClassName"] == "standard-rwo"
    assert env(docs)["OMP_NUM_THREADS"] == "2"


def test_sidecar_like_example() -> None:
    docs = template("-f", str(CHART / "examples" / "values-sidecar-like.yaml"))
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert "emptyDir" in volumes(docs)["state"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "podAffinity" in pod["affinity"]
    assert rendered_config(docs)["embeddings"]["enabled"] is False


K8S_HOW = "pip install kubernetes (its generated models give the Kubernetes field names)"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.name if p else "defaults")
def test_rendered_objects_use_real_kubernetes_fields(values_file: Path | None) -> None:
    pytest.importorskip("kubernetes", reason=K8S_HOW)
    args = ["-f", str(values_file)] if values_file else []
    for doc in template(*args, *ALL_OPTIONAL):
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # CRDs: no model in the client; their shape is asserted above
        assert k8s_fields.object_problems(doc) == [], doc["kind"]


def test_one_replica_with_file_state_has_no_budget_and_no_scaler() -> None:
    kinds = {d["kind"] for d in template()}
    assert "PodDisruptionBudget" not in kinds and "ScaledObject" not in kinds
    assert "PersistentVolumeClaim" in kinds


def test_replicas_with_state_in_kafka_roll_and_keep_one_pod() -> None:
    docs = template("--set", "replicaCount=3,config.state.backend=kafka")
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    assert "driftmon.state" in config_map(docs)["data"]["driftmon.yaml"]


def test_keda_scales_on_the_groups_lag() -> None:
    docs = template("--set", "keda.enabled=true,config.state.backend=kafka")
    scaled = one(docs, "ScaledObject")
    assert "replicas" not in one(docs, "Deployment")["spec"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "driftmon"
    assert trigger["metadata"]["topic"] == "llm-outputs"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]


def test_the_template_fails_clearly_without_the_schema() -> None:
    # --skip-schema-validation (helm ≥ 3.16) leaves the template's own check.
    result = run(
        [
            helm(),
            "template",
            "rel",
            str(CHART),
            "--skip-schema-validation",
            "--set",
            "replicaCount=2",
        ]
    )
    if "unknown flag" in result.stderr:
        pytest.skip("helm older than 3.16: no --skip-schema-validation")
    assert result.returncode != 0
    assert "replicaCount > 1 needs config.state.backend: kafka" in result.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("replicaCount=2", "backend"),
        ("config.kafka.sasl_password=hunter2", "sasl_password"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("unknownKey=1", "unknownKey"),
    ],
)
def test_schema_errors_stop_helm(setting: str, field: str) -> None:
    result = run([helm(), "template", "rel", str(CHART), "--set", setting])
    assert result.returncode != 0
    assert field in result.stderr
