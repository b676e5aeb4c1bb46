"""Prometheus alert rules: promtool checks and unit tests, and the conventions they follow."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from driftmon.core.units import LOG_FEATURES, PLAIN_FEATURES
from tests.deploy.conftest import (
    REPO,
    RULES,
    RULES_TEST,
    SPEC_METRICS,
    exported_metrics,
    metric_names,
    require_tool,
    run,
)

PROMTOOL_HOW = "apt-get install prometheus (Debian ships promtool in it)"
EXPECTED_ALERTS = {
    "DriftmonOutputDrift",
    "DriftmonDown",
    "DriftmonConsumerLagGrowing",
    "DriftmonRejectionSpike",
    "DriftmonAlertQueueOverflow",
    "DriftmonAlertsUndelivered",
}
RUNBOOK_BASE = "https://github.com/driftmon/driftmon/blob/main/docs/runbooks.md#"
# Metrics the rules may read beyond SPEC §5 (besides Prometheus's own `up`): the
# alert-queue overflow counter, which SPEC §5 does not list but driftmon.metrics
# exports, unlabelled and so present at 0 from start-up; the undelivered-alerts gauge,
# exported at 0 per Alertmanager URL from start-up.
# Beyond SPEC §5, documented in docs/spec.md.
EXTRA_RULE_METRICS = {
    "driftmon_alert_queue_dropped_total",
    "driftmon_alerts_undelivered",
    "driftmon_events_accepted_total",
}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert [g["name"] for g in doc["groups"]] == ["driftmon"]
    return list(doc["groups"][0]["rules"])


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", PROMTOOL_HOW)
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    promtool = require_tool("promtool", PROMTOOL_HOW)
    result = run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_example_config() -> None:
    promtool = require_tool("promtool", PROMTOOL_HOW)
    example = REPO / "config" / "prometheus" / "prometheus.example.yml"
    result = run([promtool, "check", "config", example.name], cwd=example.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    scrape = yaml.safe_load(example.read_text())["scrape_configs"]
    jobs = [job["job_name"] for job in scrape]
    assert all(re.fullmatch(r".*driftmon.*", job) for job in jobs), (
        "DriftmonDown matches the job with job=~'.*driftmon.*'"
    )
    assert scrape[0]["static_configs"][0]["targets"] == ["driftmon:9308"]


def test_the_expected_alerts_and_nothing_else() -> None:
    assert set(alerts()) == EXPECTED_ALERTS
    assert all(re.fullmatch(r"Driftmon(?:[A-Z][a-z]+)+", name) for name in alerts())


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_alert_has_severity_and_annotations(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in {"page", "warning"}
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"
    assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower()


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_alert_reads_only_known_metrics(name: str) -> None:
    unknown = metric_names(alerts()[name]["expr"]) - SPEC_METRICS - EXTRA_RULE_METRICS
    assert not unknown, f"{name} reads metrics SPEC §5 does not define: {unknown}"


def test_rules_read_metrics_driftmon_exports() -> None:
    exported = exported_metrics()
    for name, rule in alerts().items():
        missing = metric_names(rule["expr"]) - exported
        assert not missing, f"{name} reads metrics driftmon.metrics does not register: {missing}"


def test_no_rule_pages_on_a_detection_counter() -> None:
    # A counter first scraped after it moved 0 -> 1 has no earlier sample:
    # increase()/rate() over it stay 0 and such a page never fires.
    counter_fn = re.compile(
        r"\b(?:increase|rate|irate|delta|idelta|changes|resets)\s*\(\s*"
        r"driftmon_drift_detections_total\b"
    )
    for rule in rules():
        assert not counter_fn.search(rule["expr"]), rule.get("alert", rule.get("record"))


def test_drift_page_reads_the_active_gauge() -> None:
    rule = alerts()["DriftmonOutputDrift"]
    expr = " ".join(rule["expr"].split())
    assert expr == "max by (endpoint, model, feature) (driftmon_drift_active) == 1"
    assert rule["labels"]["severity"] == "page"
    assert rule["for"] in {"0m", "1m"}


def test_down_alert_covers_a_missing_target() -> None:
    expr = alerts()["DriftmonDown"]["expr"]
    assert 'up{job=~".*driftmon.*"} == 0' in expr and "absent(" in expr


def test_unit_tests_cover_every_alert_firing_and_silent() -> None:
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == [RULES.name]
    fires: set[str] = set()
    silent: set[str] = set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires == EXPECTED_ALERTS, f"never shown firing: {EXPECTED_ALERTS - fires}"
    assert silent == EXPECTED_ALERTS, f"never shown silent: {EXPECTED_ALERTS - silent}"


def test_drift_description_names_the_unit_of_every_feature() -> None:
    # The value and baseline gauges are in each feature's own unit (driftmon.core.units);
    # the description says which, with percent for every other (0/1) feature.
    description = alerts()["DriftmonOutputDrift"]["annotations"]["description"]
    for feature in {**LOG_FEATURES, **PLAIN_FEATURES}:
        assert f'eq $f "{feature}"' in description, feature
    assert "{{ else }}In % of answers.{{ end }}" in description
