"""LiteLLM's ``StandardLoggingPayload`` (its logging callbacks, the proxy's logs): one JSON
object per message, one event.

Mapping: the answer's text at ``response.choices[0].message.content``, the model snapshot
at ``response.model`` (the top-level ``model`` is the name asked for: ``requested_model``),
tokens at ``prompt_tokens``/``completion_tokens``, times at ``startTime``/``endTime`` (epoch
seconds). The endpoint is the first of ``input.endpoint_from`` found in the payload: a
top-level key (``model_group``), a dotted path into it, or ``metadata.tags.endpoint``: the
request tag ``endpoint:<name>`` (``metadata={"tags": ["endpoint:chat"]}`` in the call).
Empty strings count as absent (LiteLLM writes ``"model_group": ""`` outside its router).

>>> payload = {"call_type": "completion", "startTime": 1.7e9, "endTime": 1.7e9 + 0.5,
...            "model": "gpt-4o", "model_group": "chat", "completion_tokens": 3,
...            "response": {"model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_1",
...                         "choices": [{"message": {"content": "Hi."}}]}}
>>> event = LiteLLMDecoder(("model_group",), 0).decode_payload(payload)
>>> event.endpoint, event.model, event.requested_model, event.output, event.latency_ms
('chat', 'gpt-4o-2024-08-06', 'gpt-4o', 'Hi.', 500.0)
>>> event.attributes["system_fingerprint"]
'fp_1'
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from driftmon.core.events import Event, Rejection, event_from_record, parse_record
from driftmon.decoders.otel import VERSION_ATTRIBUTE, Dedup, bounded_attributes, find_endpoint

TAG_ENDPOINT: Final = "metadata.tags.endpoint"
_ATTRIBUTE_KEYS: Final = (
    "call_type",
    "custom_llm_provider",
    "model_group",
    "model_id",
    "cache_hit",
    "status",
    "stream",
)


def is_payload(record: dict[str, Any]) -> bool:
    """Whether a JSON object is a StandardLoggingPayload (auto sniffing)."""
    return "call_type" in record and "startTime" in record


class LiteLLMDecoder:
    def __init__(self, endpoint_from: tuple[str, ...], dedup_window: int) -> None:
        self.endpoint_from = endpoint_from
        self.dedup = Dedup(dedup_window)
        self.skipped: Counter[str] = Counter()

    def __call__(self, raw: bytes | str, *, max_bytes: int = 1_000_000) -> list[Event | Rejection]:
        record = parse_record(raw, max_bytes=max_bytes)
        if isinstance(record, Rejection):
            return [record]
        decoded = self.decode_payload(record)
        if isinstance(decoded, Event) and not self.dedup.first(decoded.id or ""):
            self.skipped["duplicate"] += 1
            return []
        return [decoded]

    def decode_payload(self, payload: dict[str, Any]) -> Event | Rejection:
        endpoint, rejection = find_endpoint(self.endpoint_from, _Lookup(payload))
        if rejection is not None:
            return rejection
        response = payload.get("response")
        if type(response) is not dict:
            response = {}
        choice = _first_choice(response)
        message = choice.get("message")
        record: dict[str, Any] = {
            "endpoint": endpoint,
            "model": _non_empty(response.get("model")) or _non_empty(payload.get("model")),
            "requested_model": _non_empty(payload.get("model")),
            "provider": _non_empty(payload.get("custom_llm_provider")),
            "id": response.get("id") or payload.get("id"),
            "input_tokens": payload.get("prompt_tokens"),
            "output_tokens": payload.get("completion_tokens"),
            "finish_reason": choice.get("finish_reason"),
        }
        if type(message) is dict and message.get("content") is not None:
            record["output"] = message["content"]
        if payload.get("status") == "failure" and record["finish_reason"] is None:
            record["finish_reason"] = "error"
        start, end = payload.get("startTime"), payload.get("endTime")
        if isinstance(start, (int, float)):
            record["timestamp"] = start
            if isinstance(end, (int, float)):
                record["latency_ms"] = (end - start) * 1000.0
        attributes = bounded_attributes({k: payload.get(k) for k in _ATTRIBUTE_KEYS})
        fingerprint = response.get("system_fingerprint")
        if type(fingerprint) is str and fingerprint:
            attributes[VERSION_ATTRIBUTE] = fingerprint
        record["attributes"] = attributes
        return event_from_record(
            {k: v for k, v in record.items() if v is not None}, require_output=False
        )


def _first_choice(response: dict[str, Any]) -> dict[str, Any]:
    choices = response.get("choices")
    if type(choices) is list and choices and type(choices[0]) is dict:
        return choices[0]
    return {}


def _non_empty(value: Any) -> Any:
    return None if value == "" else value


class _Lookup:
    """``get(name)`` over the payload: a key, a dotted path, or the ``endpoint:`` tag."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    def get(self, name: str) -> Any:
        payload = self.payload
        if name == TAG_ENDPOINT:
            for tag in payload.get("request_tags") or ():
                if type(tag) is str and tag.startswith("endpoint:"):
                    return _non_empty(tag[len("endpoint:") :])
            return None
        value = payload.get(name)
        if value is None and "." in name:
            value = payload
            for part in name.split("."):
                value = value.get(part) if type(value) is dict else None
        return _non_empty(value)
