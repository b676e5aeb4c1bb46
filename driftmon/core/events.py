"""Parse and validate one raw record into an Event, or a Rejection with a reason code (SPEC §1).

Nothing raises out of :func:`parse_event`: every malformed input becomes a Rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

REJECTION_REASONS: Final = (
    "not_json",
    "not_object",
    "missing_field",
    "bad_type",
    "out_of_range",
    "too_large",
    # A message that is not the protobuf it should be (OTLP protobuf input).
    "not_protobuf",
    # Anything unexpected while decoding, featurising or detecting one record: the record
    # is rejected (exception type only, never its text) and processing goes on.
    "internal_error",
)
FINISH_REASONS: Final = ("stop", "length", "content_filter", "tool_call", "error")


@dataclass(slots=True)
class Event:
    """One accepted input event. Times are epoch seconds (float).

    ``has_output`` is False for a response whose text was not captured (an OpenTelemetry
    span without content capture, a LiteLLM payload without the text): ``output`` is then
    ``""`` and the text features are not fed (it is not an empty answer).
    """

    kind: Literal["completion", "feedback"]
    endpoint: str
    model: str
    output: str = ""
    timestamp: float | None = None
    id: str | None = None
    requested_model: str | None = None
    provider: str | None = None
    prompt_version: str | None = None
    input: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    finish_reason_raw: str | None = None
    latency_ms: float | None = None
    feedback: float | None = None
    feedback_name: str | None = None
    attributes: dict[str, Any] | None = None
    has_output: bool = True


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not accepted. ``reason`` is one of REJECTION_REASONS.

    ``field`` names the offending field (``"latency_ms"``, ``"feedback.value"``, an
    OpenTelemetry attribute name) and is None when the record as a whole is at fault
    (``not_json``, ``not_object``, ``too_large``). ``detail`` never quotes the input.
    """

    reason: str
    detail: str
    field: str | None = None


# Endpoint and model become metric labels, so their length is bounded.
_MAX_LABEL_CHARS: Final = 256
_MAX_EPOCH_SECONDS: Final = 253_402_300_800.0  # 10000-01-01T00:00:00Z
_INF: Final = float("inf")

# Lookup order per field: the native key first, then OpenTelemetry GenAI names, newest first.
_ENDPOINT_KEYS: Final = ("endpoint", "driftmon.endpoint")
_MODEL_KEYS: Final = ("model", "gen_ai.response.model", "gen_ai.request.model")
_REQUESTED_MODEL_KEYS: Final = ("requested_model", "gen_ai.request.model")
_PROVIDER_KEYS: Final = ("provider", "gen_ai.provider.name", "gen_ai.system")
_ID_KEYS: Final = ("id", "gen_ai.response.id")
_INPUT_TOKENS_KEYS: Final = (
    "input_tokens",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
)
_OUTPUT_TOKENS_KEYS: Final = (
    "output_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
)
_OTEL_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
_OTEL_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
_OTEL_COMPLETION_CONTENT: Final = "gen_ai.completion.0.content"

# Provider spellings (OpenAI, Anthropic, Gemini, Bedrock, Cohere, Mistral, TGI), lower-cased.
_FINISH_REASON_ALIASES: Final[dict[str, str]] = {
    alias: reason
    for reason, aliases in (
        ("stop", ("stop", "end_turn", "stop_sequence", "eos", "eos_token", "complete")),
        ("length", ("length", "max_tokens", "max_output_tokens", "model_length")),
        (
            "content_filter",
            (
                "content_filter",
                "content_filtered",
                "safety",
                "recitation",
                "refusal",
                "blocklist",
                "prohibited_content",
                "spii",
                "guardrail_intervened",
                "error_toxic",
            ),
        ),
        ("tool_call", ("tool_calls", "tool_call", "tool_use", "function_call")),
        ("error", ("error",)),
    )
    for alias in aliases
}

_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


class _Invalid(Exception):
    """Raised inside the parser; parse_event turns it into a Rejection about ``field``."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.detail = f"{field}: {message}"


def parse_event(raw: bytes | str, *, max_bytes: int = 1_000_000) -> Event | Rejection:
    """Parse one JSON record (SPEC §1). Returns a Rejection instead of raising."""
    record = parse_record(raw, max_bytes=max_bytes)
    if type(record) is not dict:
        return record  # type: ignore[return-value]
    return event_from_record(record)


def parse_record(raw: bytes | str, *, max_bytes: int = 1_000_000) -> dict[str, Any] | Rejection:
    """The JSON object of one message, or the Rejection saying why there is none."""
    # A tuple, not ``str | bytes``: isinstance against a union type is twice as slow.
    if isinstance(raw, (str, bytes, bytearray)):
        if _too_large(raw, max_bytes):
            return Rejection("too_large", f"message is larger than {max_bytes} bytes")
    else:
        # Kafka tombstones arrive as None; they must be counted, not crash the loop.
        return Rejection("not_json", f"message is {type(raw).__name__}, not bytes or str")
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # The decoder's message may quote the input, which can be personal data.
        return Rejection("not_json", f"invalid JSON at char {exc.pos}")
    if type(record) is not dict:
        return Rejection("not_object", f"top level is {_json_type(record)}, expected object")
    return record


def event_from_record(record: dict[str, Any], *, require_output: bool = True) -> Event | Rejection:
    """The event of one decoded JSON object (native and flat OpenTelemetry keys).

    ``require_output=False``: a completion without output text is an event with
    ``has_output`` False (OTLP and LiteLLM inputs, where content capture is optional).
    """
    try:
        kind = record.get("kind")
        if kind is None or kind == "completion":
            return _completion(record, require_output)
        if kind == "feedback":
            return _feedback(record)
        raise _Invalid("bad_type", "kind", "expected 'completion' or 'feedback'")
    except _Invalid as exc:
        return Rejection(exc.reason, exc.detail, exc.field)


def _too_large(raw: str | bytes | bytearray, max_bytes: int) -> bool:
    size = len(raw)
    if size > max_bytes:
        return True
    # UTF-8 takes at most 4 bytes per code point, so most str inputs need no encoding.
    if not isinstance(raw, str) or raw.isascii() or size * 4 <= max_bytes:
        return False
    return len(raw.encode("utf-8", "surrogatepass")) > max_bytes


def _completion(record: dict[str, Any], require_output: bool = True) -> Event:
    endpoint = _label(record, _ENDPOINT_KEYS)
    model = _label(record, _MODEL_KEYS)
    output = _output(record, require_output)
    has_output = output is not None
    if output is None:
        output = ""
    finish_reason_raw = _finish_reason(record)
    feedback: float | None = None
    feedback_name: str | None = None
    value = record.get("feedback")
    if value is not None:
        feedback, feedback_name = _inline_feedback(value)
    latency_ms = record.get("latency_ms")
    if latency_ms is not None:
        latency_ms = _number("latency_ms", latency_ms)
        if latency_ms < 0:
            raise _Invalid("out_of_range", "latency_ms", "must be >= 0")
    attributes = record.get("attributes")
    if attributes is not None and type(attributes) is not dict:
        raise _bad_type("attributes", "object", attributes)
    # Positional: with keywords, building the Event costs ~0.8 µs more per event.
    return Event(
        "completion",
        endpoint,
        model,
        output,
        _timestamp(record.get("timestamp")),
        _optional_str(record, _ID_KEYS),
        _optional_str(record, _REQUESTED_MODEL_KEYS),
        _optional_str(record, _PROVIDER_KEYS),
        _optional_str(record, ("prompt_version",)),
        _optional_str(record, ("input",)),
        _token_count(record, _INPUT_TOKENS_KEYS),
        _token_count(record, _OUTPUT_TOKENS_KEYS),
        _normalise_finish_reason(finish_reason_raw),
        finish_reason_raw,
        latency_ms,
        feedback,
        feedback_name,
        attributes,
        has_output,
    )


def _feedback(record: dict[str, Any]) -> Event:
    endpoint = _label(record, _ENDPOINT_KEYS)
    model = _label(record, _MODEL_KEYS)
    value = record.get("value")
    if value is None:
        raise _Invalid("missing_field", "value", "missing")
    return Event(
        kind="feedback",
        endpoint=endpoint,
        model=model,
        timestamp=_timestamp(record.get("timestamp")),
        id=_optional_str(record, _ID_KEYS),
        feedback=_feedback_value("value", value),
        feedback_name=_optional_str(record, ("name",)),
    )


def _label(record: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A required metric-label string: the first of ``keys`` present; JSON null is absent."""
    for key in keys:
        value = record.get(key)
        if value is not None:
            if type(value) is not str:
                raise _bad_type(key, "string", value)
            if not 0 < len(value) <= _MAX_LABEL_CHARS:
                raise _Invalid("out_of_range", key, f"length must be 1..{_MAX_LABEL_CHARS}")
            return value
    raise _Invalid("missing_field", keys[0], "missing")


def _optional_str(record: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None:
            if type(value) is not str:
                raise _bad_type(key, "string", value)
            return value
    return None


def _output(record: dict[str, Any], required: bool) -> str | None:
    value = record.get("output")
    if type(value) is str:
        return value
    if value is not None:
        raise _bad_type("output", "string", value)
    messages = record.get(_OTEL_OUTPUT_MESSAGES)
    if messages is not None:
        return _otel_output_text(messages)
    value = record.get(_OTEL_COMPLETION_CONTENT)
    if value is None:
        if not required:
            return None
        raise _Invalid("missing_field", "output", "missing")
    if type(value) is not str:
        raise _bad_type(_OTEL_COMPLETION_CONTENT, "string", value)
    return value


def _otel_output_text(messages: Any) -> str:
    """Concatenate the text parts of ``gen_ai.output.messages`` (a list, or that list as JSON)."""
    key = _OTEL_OUTPUT_MESSAGES
    if type(messages) is str:
        try:
            messages = orjson.loads(messages)
        except orjson.JSONDecodeError:
            raise _Invalid("bad_type", key, "string is not a JSON array") from None
    if type(messages) is not list:
        raise _bad_type(key, "array", messages)
    texts: list[str] = []
    for message in messages:
        if type(message) is not dict:
            raise _bad_type(f"{key}[]", "object", message)
        parts = message.get("parts")
        if parts is None:
            continue
        if type(parts) is not list:
            raise _bad_type(f"{key}[].parts", "array", parts)
        for part in parts:
            if type(part) is not dict:
                raise _bad_type(f"{key}[].parts[]", "object", part)
            if part.get("type") == "text":
                content = part.get("content")
                if type(content) is not str:
                    raise _bad_type(f"{key}[].parts[].content", "string", content)
                texts.append(content)
    return "\n".join(texts)


def _finish_reason(record: dict[str, Any]) -> str | None:
    value = record.get("finish_reason")
    key = "finish_reason"
    if value is None:
        key = _OTEL_FINISH_REASONS
        value = record.get(key)
        if type(value) is list:
            value = value[0] if value else None
    if value is None or type(value) is str:
        return value
    raise _bad_type(key, "string", value)


def _normalise_finish_reason(raw: str | None) -> str | None:
    if raw is None:
        return None
    return _FINISH_REASON_ALIASES.get(raw.lower())


def _token_count(record: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    """A count >= 0; an integral float such as ``12.0`` is accepted."""
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        # is_integer() is False for NaN and infinities, so only finite counts get through.
        if type(value) is float and value.is_integer():
            value = int(value)
        elif type(value) is not int:
            raise _bad_type(key, "integer", value)
        if value < 0:
            raise _Invalid("out_of_range", key, "must be >= 0")
        return int(value)
    return None


def _number(key: str, value: Any) -> float:
    """A finite float from a JSON number; booleans are not numbers here."""
    if type(value) is not float and type(value) is not int:
        raise _bad_type(key, "number", value)
    number = float(value)
    if not -_INF < number < _INF:
        raise _Invalid("out_of_range", key, "must be finite")
    return number


def _feedback_value(key: str, value: Any) -> float:
    number = _number(key, value)
    if not -1.0 <= number <= 1.0:
        raise _Invalid("out_of_range", key, "must be in [-1, 1]")
    return number


def _inline_feedback(value: Any) -> tuple[float, str | None]:
    if type(value) is not dict:
        return _feedback_value("feedback", value), None
    name = value.get("name")
    if name is not None and type(name) is not str:
        raise _bad_type("feedback.name", "string", name)
    number = value.get("value")
    if number is None:
        raise _Invalid("missing_field", "feedback.value", "missing")
    return _feedback_value("feedback.value", number), name


def _timestamp(value: Any) -> float | None:
    """Epoch seconds from an RFC 3339 string or an epoch number in s, ms, µs or ns."""
    if value is None:
        return None
    if type(value) is str:
        seconds = _parse_rfc3339(value)
    else:
        number = _number("timestamp", value)
        if number < 1e11:
            seconds = number
        elif number < 1e14:
            seconds = value / 1e3
        elif number < 1e17:
            seconds = value / 1e6
        else:
            seconds = value / 1e9
    if not 0.0 <= seconds < _MAX_EPOCH_SECONDS:
        raise _Invalid("out_of_range", "timestamp", "must be between 1970 and 9999")
    return seconds


def _parse_rfc3339(text: str) -> float:
    try:
        # RFC 3339 allows lower-case "t" and "z"; fromisoformat does not.
        moment = datetime.fromisoformat(text.upper())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise _Invalid("bad_type", "timestamp", "not an RFC 3339 date-time") from None


def _json_type(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _bad_type(key: str, expected: str, value: object) -> _Invalid:
    return _Invalid("bad_type", key, f"expected {expected}, got {_json_type(value)}")
