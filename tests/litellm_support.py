"""Real LiteLLM calls (``mock_response``: no network) for the tests.

LiteLLM keeps its callbacks in process-wide state: a second test module that set
``litellm.callbacks`` in the same pytest process was never called back (its fixture timed
out in the full suite, never alone). So the payloads every module needs are captured
once per process (:func:`payloads_for`), and code that must register its own callback
runs in a fresh interpreter (:func:`run_python`; importing LiteLLM there takes seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest


def _env() -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no network


def run_python(code: str, *args: str, timeout: float = 120.0) -> str:
    """``code`` in a fresh interpreter with LiteLLM's offline settings; its stdout."""
    pytest.importorskip("litellm")
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


TEXTS = ("Hello there.", "Sure: here it is.")
ENDPOINTS = ("support-chat", "routing")  # the tagged endpoints the tests use
_captured: list[dict[str, Any]] = []


def payloads_for(endpoint: str) -> list[dict[str, Any]]:
    """The StandardLoggingPayloads (JSON as LiteLLM's loggers write them) of two real
    ``gpt-4o`` calls answering :data:`TEXTS`, tagged ``endpoint:<endpoint>``."""
    assert endpoint in ENDPOINTS, endpoint
    if not _captured:
        _captured.extend(_capture_all())
    tag = f"endpoint:{endpoint}"
    return [p for p in _captured if tag in (p.get("request_tags") or [])]


def _capture_all() -> list[dict[str, Any]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network
    litellm = pytest.importorskip("litellm")
    from litellm.integrations.custom_logger import CustomLogger

    from tests.support import wait_for

    captured: list[dict[str, Any]] = []

    class Capture(CustomLogger):  # type: ignore[misc]
        def log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            captured.append(kwargs["standard_logging_object"])

    litellm.callbacks = [Capture()]
    try:
        for endpoint in ENDPOINTS:
            for text in TEXTS:
                litellm.completion(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "Hi"}],
                    mock_response=text,
                    metadata={"tags": [f"endpoint:{endpoint}"]},
                )
        wait_for(lambda: len(captured) == len(ENDPOINTS) * len(TEXTS), timeout=60)
    finally:
        litellm.callbacks = []
    return [json.loads(json.dumps(p, default=str)) for p in captured]
