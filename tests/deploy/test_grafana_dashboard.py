"""The Grafana dashboard JSON and its provisioning files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    DASHBOARD,
    REPO,
    SPEC_METRICS,
    exported_metrics,
    metric_names,
    require_tool,
    run,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONING = REPO / "config" / "grafana" / "provisioning"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def data_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels() if p["type"] != "row"]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def variable_query(var: dict[str, Any]) -> str:
    query = var["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def prometheus_annotations() -> list[dict[str, Any]]:
    return [a for a in dashboard()["annotations"]["list"] if a.get("datasource") == DATASOURCE]


def all_exprs() -> list[str]:
    exprs = [t["expr"] for p in data_panels() for t in p["targets"]]
    exprs += [a["expr"] for a in prometheus_annotations()]
    return exprs


def panel_with(*metrics: str, kind: str = "timeseries") -> dict[str, Any]:
    for panel in data_panels():
        if panel["type"] != kind:
            continue
        found = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        if set(metrics) <= found:
            return panel
    raise AssertionError(f"no {kind} panel queries all of {metrics}")


def test_dashboard_header() -> None:
    d = dashboard()
    assert d["uid"] == "driftmon"
    assert d["title"]
    assert 36 <= d["schemaVersion"] <= 41
    assert d["id"] is None, "a provisioned dashboard must not carry a database id"


def test_datasource_variable() -> None:
    ds = variables()["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("endpoint", "label_values(driftmon_events_total, endpoint)"),
        ("model", 'label_values(driftmon_events_total{endpoint=~"$endpoint"}, model)'),
    ],
)
def test_key_variables(name: str, query: str) -> None:
    var = variables()[name]
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    assert variable_query(var) == query
    assert var["multi"] and var["includeAll"]


def test_panel_ids_unique_and_layout_set() -> None:
    ids = [p["id"] for p in all_panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in all_panels():
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in data_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), f"{panel['title']}: target {target['refId']} has no expr"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_expr_uses_only_spec_metrics() -> None:
    exprs = all_exprs() + [variable_query(v) for v in variables().values() if v["type"] == "query"]
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no driftmon metric in {expr!r}"
        assert names <= SPEC_METRICS, f"not in SPEC §5: {names - SPEC_METRICS} in {expr!r}"


def test_every_expr_reads_metrics_driftmon_exports() -> None:
    exported = exported_metrics()
    for expr in all_exprs():
        missing = metric_names(expr) - exported
        assert not missing, f"driftmon.metrics does not register {missing} (in {expr!r})"


def test_key_scoped_queries_follow_the_variables() -> None:
    keyed = {
        "driftmon_events_total",
        "driftmon_feature_value",
        "driftmon_feature_baseline",
        "driftmon_detector_statistic",
        "driftmon_detector_threshold",
        "driftmon_drift_active",
        "driftmon_input_drift_active",
        "driftmon_last_detection_timestamp_seconds",
    }
    for panel in data_panels():
        if panel["title"] == "Rejected":  # a share of all input, rejected events have no key
            continue
        for target in panel["targets"]:
            for name in metric_names(target["expr"]) & keyed:
                for selector in re.findall(
                    rf"\b{name}\{{([^}}]*)\}}|\b{name}\b(?!\{{)", target["expr"]
                ):
                    assert "$endpoint" in selector and "$model" in selector, (
                        f"{panel['title']}: {name} not filtered by $endpoint/$model"
                    )


def test_required_panels() -> None:
    events = panel_with("driftmon_events_total")
    assert any(
        re.search(r"sum by \(endpoint, model\) \(rate\(driftmon_events_total\{", t["expr"])
        for t in events["targets"]
    )
    panel_with("driftmon_feature_value", "driftmon_feature_baseline")
    panel_with("driftmon_detector_statistic", "driftmon_detector_threshold")

    table = panel_with("driftmon_drift_active", kind="table")
    first = table["targets"][0]
    assert "driftmon_drift_active" in first["expr"] and first["expr"].rstrip().endswith("== 1")
    assert first["instant"] is True and first["format"] == "table"

    for metric, grouping in (
        ("driftmon_events_rejected_total", "by (reason)"),
        ("driftmon_alerts_sent_total", "by (status)"),
        ("driftmon_consumer_lag", "by (topic, partition)"),
    ):
        panel = panel_with(metric)
        assert any(grouping in t["expr"] for t in panel["targets"]), metric
    panel_with("driftmon_embedding_sample_ratio")


def test_model_transitions_are_a_table_of_current_verdicts() -> None:
    table = panel_with("driftmon_transition_verdict", kind="table")
    (target,) = table["targets"]
    expr = target["expr"]
    assert "by (endpoint, from_model, to_model, verdict)" in expr
    assert expr.rstrip().endswith("== 1") and '$endpoint"' in expr
    assert target["instant"] is True and target["format"] == "table"


def test_input_drifts_are_a_table_apart_from_model_drifts() -> None:
    table = panel_with("driftmon_input_drift_active", kind="table")
    (target,) = table["targets"]
    expr = target["expr"]
    assert "by (endpoint, model, feature)" in expr and "driftmon_drift_active" not in expr
    assert expr.rstrip().endswith("== 1") and '$endpoint"' in expr
    assert target["instant"] is True and target["format"] == "table"


def test_detections_are_annotations() -> None:
    exprs = [a["expr"] for a in prometheus_annotations() if a["enable"]]
    assert any(
        "driftmon_last_detection_timestamp_seconds" in e or "driftmon_drift_active" in e
        for e in exprs
    )


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by values that keep the expression valid PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)


def test_every_expr_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus (Debian ships promtool in it)")
    exprs = all_exprs()
    for var in variables().values():
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *[a-z_]+\)", variable_query(var))
            assert inner, variable_query(var)
            exprs.append(inner.group(1))
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": _as_promql(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "driftmon.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((PROVISIONING / "datasources" / "driftmon.yaml").read_text())
    assert sources["apiVersion"] == 1
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
