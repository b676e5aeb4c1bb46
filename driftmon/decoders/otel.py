"""What OTLP spans and log records have in common once decoded: attributes → one event.

:mod:`driftmon.decoders.otlp` walks the envelopes (protobuf or JSON) and hands each span
or log record here as plain Python values; this module names the endpoint (in
``input.endpoint_from`` order), picks the GenAI attributes the native parser reads, adds
the timing, and keeps a bounded set of attributes for stratification.

>>> item = Item({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.output_tokens": 3},
...             {"service.name": "chat"}, start_ns=1_700_000_000_000_000_000,
...             end_ns=1_700_000_000_250_000_000)
>>> event = to_event(item, ("driftmon.endpoint", "service.name"))
>>> event.endpoint, event.model, event.latency_ms, event.has_output
('chat', 'gpt-4o', 250.0, False)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Protocol

from driftmon.core.events import Event, Rejection, event_from_record

# The attributes the native parser reads (SPEC §1 flat OpenTelemetry keys).
MAPPED_KEYS: Final = (
    "gen_ai.response.model",
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.response.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "gen_ai.response.finish_reasons",
    "gen_ai.output.messages",
    "gen_ai.completion.0.content",
)
# Prompt-side content: never decoded (it can be huge, and it is personal data).
SKIPPED_KEYS: Final = frozenset(
    {
        "gen_ai.input.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "gen_ai.prompt",
    }
)
# Content and what the event already holds: not copied into ``Event.attributes``.
_NOT_ATTRIBUTES: Final = SKIPPED_KEYS | {"gen_ai.output.messages", "gen_ai.completion.0.content"}
FINGERPRINT_KEYS: Final = (
    "gen_ai.openai.response.system_fingerprint",
    "openai.response.system_fingerprint",
    "system_fingerprint",
)
VERSION_ATTRIBUTE: Final = "system_fingerprint"
"""Where the provider's version fingerprint goes in ``Event.attributes`` (transitions)."""

MAX_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_CHARS: Final = 256
_MAX_LABEL_CHARS: Final = 256
# Operations that are answers of a model; others (embeddings, tools, agents) are not events.
INFERENCE_OPERATIONS: Final = frozenset({"chat", "text_completion", "generate_content"})
DETAILS_EVENT: Final = "gen_ai.client.inference.operation.details"
CHOICE_EVENT: Final = "gen_ai.choice"


@dataclass(slots=True)
class Item:
    """One span or log record as plain values. ``body``: a log record's body."""

    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int = 0
    end_ns: int = 0
    trace_id: str = ""
    span_id: str = ""
    event_name: str | None = None
    body: Any = None


def is_inference(item: Item) -> bool:
    """A model's answer: a GenAI inference span, a details event or an old choice event."""
    if item.event_name is not None:
        return item.event_name in (DETAILS_EVENT, CHOICE_EVENT)
    attrs = item.attributes
    operation = attrs.get("gen_ai.operation.name")
    if operation is not None:  # of any type: a mistyped one must not raise
        return type(operation) is str and operation in INFERENCE_OPERATIONS
    return "gen_ai.request.model" in attrs or "gen_ai.response.model" in attrs


class Scope(Protocol):
    """Where attributes are looked up by name (a dict, or LiteLLM's payload paths)."""

    def get(self, name: str, /) -> Any: ...


def find_endpoint(names: tuple[str, ...], *scopes: Scope) -> tuple[str | None, Rejection | None]:
    """The first of ``names`` present, each looked up in ``scopes`` in order."""
    for name in names:
        for scope in scopes:
            value = scope.get(name)
            if value is None:
                continue
            if type(value) is not str:
                return None, Rejection("bad_type", f"{name}: expected string", name)
            if not 0 < len(value) <= _MAX_LABEL_CHARS:
                return None, Rejection(
                    "out_of_range", f"{name}: length must be 1..{_MAX_LABEL_CHARS}", name
                )
            return value, None
    return None, Rejection(
        "missing_field",
        f"endpoint: none of input.endpoint_from present ({', '.join(names)})",
        "endpoint",
    )


def bounded_attributes(*scopes: dict[str, Any]) -> dict[str, Any]:
    """Scalar attributes (first scope wins), at most MAX_ATTRIBUTES, short strings only."""
    out: dict[str, Any] = {}
    for scope in scopes:
        for key, value in scope.items():
            if len(out) >= MAX_ATTRIBUTES:
                return out
            if key in out or key in _NOT_ATTRIBUTES or len(key) > MAX_ATTRIBUTE_CHARS:
                continue
            if type(value) is str:
                if len(value) <= MAX_ATTRIBUTE_CHARS:
                    out[key] = value
            elif type(value) in (int, float, bool):
                out[key] = value
    return out


def to_event(item: Item, endpoint_from: tuple[str, ...]) -> Event | Rejection:
    """The event of one span or log record (its attributes first, then its resource's)."""
    attrs = item.attributes
    endpoint, rejection = find_endpoint(endpoint_from, attrs, item.resource)
    if rejection is not None:
        return rejection
    record: dict[str, Any] = {"endpoint": endpoint}
    for key in MAPPED_KEYS:
        value = attrs.get(key)
        if value is not None:
            record[key] = value
    if item.event_name == CHOICE_EVENT:
        _choice_body(item.body, record)
    if item.start_ns:
        record["timestamp"] = item.start_ns / 1e9
        if item.end_ns:
            record["latency_ms"] = (item.end_ns - item.start_ns) / 1e6
    attributes = bounded_attributes(attrs, item.resource)
    for key in FINGERPRINT_KEYS:
        value = attrs.get(key)
        if type(value) is str and len(value) <= MAX_ATTRIBUTE_CHARS:
            attributes[VERSION_ATTRIBUTE] = value
            break
    record["attributes"] = attributes
    return event_from_record(record, require_output=False)


def _choice_body(body: Any, record: dict[str, Any]) -> None:
    """An old ``gen_ai.choice`` event: ``{index, finish_reason, message: {content}}``."""
    if type(body) is not dict:
        return
    message = body.get("message")
    if type(message) is dict and message.get("content") is not None:
        record["output"] = message["content"]
    finish = body.get("finish_reason")
    if finish is not None and "gen_ai.response.finish_reasons" not in record:
        record["finish_reason"] = finish


class Dedup:
    """Ids seen recently (at most ``window``): a span and its details event count once.

    >>> seen = Dedup(2)
    >>> [seen.first(k) for k in ("a", "b", "a", "c", "a")]
    [True, True, False, True, True]
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first(self, key: str) -> bool:
        """Whether ``key`` is new (and remember it); always True when the window is 0."""
        if self.window <= 0 or not key:
            return True
        seen = self._seen
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > self.window:
            seen.popitem(last=False)
        return True


def dedup_key(item: Item) -> str:
    """The span's identity (a details event carries its span's ids), else the response id."""
    if item.span_id:
        return f"{item.trace_id}/{item.span_id}"
    response_id = item.attributes.get("gen_ai.response.id")
    return response_id if type(response_id) is str else ""
