"""LiteLLM's StandardLoggingPayload, captured from a real custom callback (``mock_response``:
no network), decoded; and replay of OTLP protobuf from a length-prefixed file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from driftmon.core.events import Event, Rejection
from driftmon.decoders import DecoderOptions, decoder
from driftmon.replay import replay
from driftmon.settings import Settings
from tests.litellm_support import payloads_for
from tests.otel_support import SNAPSHOT, record


@pytest.fixture(scope="module")
def payloads() -> list[dict[str, Any]]:
    return payloads_for("support-chat")


@pytest.mark.parametrize("fmt", ["auto", "litellm"])
def test_a_real_standard_logging_payload_is_an_event(
    payloads: list[dict[str, Any]], fmt: str
) -> None:
    decode = decoder(fmt)
    events = [item for p in payloads for item in decode(json.dumps(p))]
    assert all(isinstance(e, Event) for e in events)
    first, second = events
    assert isinstance(first, Event) and isinstance(second, Event)
    assert (first.endpoint, first.model, first.output) == ("support-chat", "gpt-4o", "Hello there.")
    assert second.output == "Sure: here it is."
    assert first.requested_model == "gpt-4o" and first.provider == "openai"
    assert first.output_tokens == payloads[0]["completion_tokens"]
    assert first.finish_reason == "stop"
    assert first.latency_ms is not None and first.latency_ms >= 0
    assert first.timestamp == payloads[0]["startTime"]


def test_the_snapshot_comes_from_the_response(payloads: list[dict[str, Any]]) -> None:
    payload = json.loads(json.dumps(payloads[0]))
    payload["response"]["model"] = SNAPSHOT
    payload["response"]["system_fingerprint"] = "fp_9"
    payload["model_group"] = "chat-group"
    (event,) = decoder("auto", DecoderOptions(endpoint_from=("model_group",)))(json.dumps(payload))
    assert isinstance(event, Event)
    assert (event.endpoint, event.model, event.requested_model) == (
        "chat-group",
        SNAPSHOT,
        "gpt-4o",
    )
    assert event.attributes is not None and event.attributes["system_fingerprint"] == "fp_9"


def test_a_payload_without_text_or_endpoint(payloads: list[dict[str, Any]]) -> None:
    payload = json.loads(json.dumps(payloads[0]))
    payload["response"] = "litellm.RateLimitError: ..."
    payload["status"] = "failure"
    (event,) = decoder("litellm")(json.dumps(payload))
    assert isinstance(event, Event)
    assert event.has_output is False and event.finish_reason == "error"
    payload["request_tags"] = []
    (rejection,) = decoder("litellm")(json.dumps(payload))
    assert isinstance(rejection, Rejection) and rejection.reason == "missing_field"


def test_replay_reads_length_prefixed_otlp_protobuf(tmp_path: Path) -> None:
    batches = [record("span_only", calls=2).traces_proto(), record("no_content").traces_proto()]
    path = tmp_path / "spans.otlp"
    with path.open("wb") as f:
        for batch in batches:
            f.write(len(batch).to_bytes(4, "big") + batch)
        f.write(b"\x00\x00\x00\x10\x0a\x05")  # a frame cut short: one rejection
    result = replay([str(path)], Settings(input={"format": "otlp_proto"}))
    report = result.report()
    assert report["events"] == 3  # messages
    assert report["accepted"] == 3
    assert report["rejected"] == {"not_protobuf": 1}
    assert report["rejected_examples"][0]["line"] == 3
    assert report["keys"] == [
        {"endpoint": "support-chat", "model": SNAPSHOT, "events": 3, "feedback": 0}
    ]
