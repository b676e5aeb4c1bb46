"""Helm's way of combining a values file with the chart's defaults, for the tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import CHART


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: top level is not a mapping"
    return data


def defaults() -> dict[str, Any]:
    return load(CHART / "values.yaml")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing: maps merge key by key, anything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def examples() -> list[Path]:
    return sorted((CHART / "examples").glob("*.yaml"))
