"""Tests for parse_event: the SPEC §1 input contract."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftmon.core.events import (
    FINISH_REASONS,
    REJECTION_REASONS,
    Event,
    Rejection,
    parse_event,
)

SECRET_OUTPUT = "Alice Example lives at 12 Secret Lane, card 4111-1111-1111-1111"
SECRET_INPUT = "my password is hunter2"
INSTANT = 1714564800.5  # 2024-05-01T12:00:00.5Z

NATIVE: dict[str, Any] = {
    "endpoint": "support-chat",
    "model": "gpt-4o-2024-08-06",
    "output": SECRET_OUTPUT,
    "input": SECRET_INPUT,
}


def parse(record: object, **kwargs: Any) -> Event | Rejection:
    return parse_event(json.dumps(record), **kwargs)


def accepted(record: object) -> Event:
    result = parse(record)
    assert isinstance(result, Event), result
    return result


def rejected(record: object) -> Rejection:
    result = parse(record)
    assert isinstance(result, Rejection), result
    return result


# --- valid events ---------------------------------------------------------------------------


def test_native_completion_with_every_field() -> None:
    event = accepted(
        {
            "kind": "completion",
            "endpoint": "support-chat",
            "model": "gpt-4o-2024-08-06",
            "output": "Hello!",
            "id": "resp_1",
            "timestamp": "2024-05-01T12:00:00.5Z",
            "requested_model": "gpt-4o",
            "provider": "openai",
            "prompt_version": "v12",
            "input": "Hi",
            "input_tokens": 12,
            "output_tokens": 3,
            "finish_reason": "stop",
            "latency_ms": 812.5,
            "feedback": 0.5,
            "attributes": {"tenant": "acme", "nested": [1, 2]},
        }
    )
    assert event == Event(
        kind="completion",
        endpoint="support-chat",
        model="gpt-4o-2024-08-06",
        output="Hello!",
        timestamp=INSTANT,
        id="resp_1",
        requested_model="gpt-4o",
        provider="openai",
        prompt_version="v12",
        input="Hi",
        input_tokens=12,
        output_tokens=3,
        finish_reason="stop",
        finish_reason_raw="stop",
        latency_ms=812.5,
        feedback=0.5,
        feedback_name=None,
        attributes={"tenant": "acme", "nested": [1, 2]},
    )


def test_minimal_completion_defaults_to_none() -> None:
    event = accepted({"endpoint": "e", "model": "m", "output": ""})
    assert event == Event(kind="completion", endpoint="e", model="m", output="")


def test_str_and_bytes_input_give_the_same_event() -> None:
    text = json.dumps({**NATIVE, "output": "héllo ✓"}, ensure_ascii=False)
    assert (
        parse_event(text) == parse_event(text.encode()) == accepted(NATIVE | {"output": "héllo ✓"})
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"input_tokens": 12.0, "output_tokens": 0}, {"input_tokens": 12, "output_tokens": 0}),
        ({"latency_ms": 0}, {"latency_ms": 0.0}),
        ({"feedback": -1}, {"feedback": -1.0, "feedback_name": None}),
        (
            {"feedback": {"name": "thumbs", "value": 1}},
            {"feedback": 1.0, "feedback_name": "thumbs"},
        ),
        ({"feedback": {"value": -0.25}}, {"feedback": -0.25, "feedback_name": None}),
        # JSON null is treated as an absent optional field.
        ({"id": None, "finish_reason": None}, {"id": None, "finish_reason_raw": None}),
        ({"kind": None}, {"kind": "completion"}),
    ],
)
def test_optional_completion_fields(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    event = accepted(NATIVE | extra)
    assert {name: getattr(event, name) for name in expected} == expected
    if "input_tokens" in expected:
        assert type(event.input_tokens) is int


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"kind": "feedback", "endpoint": "chat", "model": "m1", "value": -1},
            Event(kind="feedback", endpoint="chat", model="m1", feedback=-1.0),
        ),
        (
            {
                "kind": "feedback",
                "endpoint": "chat",
                "model": "m1",
                "value": 0.5,
                "id": "resp_1",
                "name": "thumbs",
                "timestamp": 1714564800.5,
            },
            Event(
                kind="feedback",
                endpoint="chat",
                model="m1",
                feedback=0.5,
                id="resp_1",
                feedback_name="thumbs",
                timestamp=INSTANT,
            ),
        ),
    ],
)
def test_feedback_kind(record: dict[str, Any], expected: Event) -> None:
    assert accepted(record) == expected


OTEL_NEW: dict[str, Any] = {
    "driftmon.endpoint": "support-chat",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.provider.name": "openai",
    "gen_ai.response.id": "chatcmpl-1",
    "gen_ai.usage.input_tokens": 40,
    "gen_ai.usage.output_tokens": 7,
    "gen_ai.response.finish_reasons": ["length", "stop"],
    "gen_ai.output.messages": [
        {
            "role": "assistant",
            "parts": [
                {"type": "text", "content": "first"},
                {"type": "tool_call", "name": "lookup", "arguments": {}},
                {"type": "text", "content": "second"},
            ],
        },
        {"role": "assistant", "parts": [{"type": "text", "content": "third"}]},
    ],
}
OTEL_NEW_EVENT = Event(
    kind="completion",
    endpoint="support-chat",
    model="gpt-4o-2024-08-06",
    output="first\nsecond\nthird",
    id="chatcmpl-1",
    requested_model="gpt-4o",
    provider="openai",
    input_tokens=40,
    output_tokens=7,
    finish_reason="length",
    finish_reason_raw="length",
)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (OTEL_NEW, OTEL_NEW_EVENT),
        # The messages attribute is often exported as a JSON string.
        (
            OTEL_NEW | {"gen_ai.output.messages": json.dumps(OTEL_NEW["gen_ai.output.messages"])},
            OTEL_NEW_EVENT,
        ),
        (
            {
                "driftmon.endpoint": "support-chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.system": "anthropic",
                "gen_ai.usage.prompt_tokens": 40,
                "gen_ai.usage.completion_tokens": 7,
                "gen_ai.response.finish_reasons": ["end_turn"],
                "gen_ai.completion.0.content": "old style",
            },
            Event(
                kind="completion",
                endpoint="support-chat",
                model="gpt-4o",
                output="old style",
                requested_model="gpt-4o",
                provider="anthropic",
                input_tokens=40,
                output_tokens=7,
                finish_reason="stop",
                finish_reason_raw="end_turn",
            ),
        ),
        (
            {
                "driftmon.endpoint": "e",
                "gen_ai.response.model": "m",
                "gen_ai.output.messages": [{"role": "assistant", "parts": []}],
                "gen_ai.response.finish_reasons": [],
            },
            Event(kind="completion", endpoint="e", model="m", output=""),
        ),
    ],
    ids=["new-names", "messages-as-json-string", "old-names", "no-text-parts"],
)
def test_opentelemetry_genai_keys(record: dict[str, Any], expected: Event) -> None:
    assert accepted(record) == expected


def test_native_keys_win_over_opentelemetry_keys() -> None:
    both = OTEL_NEW | {
        "endpoint": "native-endpoint",
        "model": "native-model",
        "output": "native output",
        "id": "native-id",
        "requested_model": "native-alias",
        "provider": "native-provider",
        "input_tokens": 1,
        "output_tokens": 2,
        "finish_reason": "tool_use",
        "gen_ai.completion.0.content": "old style",
        "gen_ai.system": "old-provider",
    }
    assert accepted(both) == Event(
        kind="completion",
        endpoint="native-endpoint",
        model="native-model",
        output="native output",
        id="native-id",
        requested_model="native-alias",
        provider="native-provider",
        input_tokens=1,
        output_tokens=2,
        finish_reason="tool_call",
        finish_reason_raw="tool_use",
    )


def test_newer_opentelemetry_names_win_over_older_ones() -> None:
    event = accepted(
        OTEL_NEW
        | {
            "gen_ai.system": "old",
            "gen_ai.usage.prompt_tokens": 1,
            "gen_ai.usage.completion_tokens": 2,
            "gen_ai.completion.0.content": "old",
        }
    )
    assert (event.provider, event.input_tokens, event.output_tokens, event.output) == (
        "openai",
        40,
        7,
        "first\nsecond\nthird",
    )


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-05-01T12:00:00.5Z",
        "2024-05-01T12:00:00.500000000Z",
        "2024-05-01t12:00:00.5z",
        "2024-05-01T14:00:00.5+02:00",
        "2024-05-01T07:30:00.5-04:30",
        "2024-05-01T12:00:00.5",  # naive: UTC
        "2024-05-01 12:00:00.5Z",
        1714564800.5,  # seconds
        1714564800500,  # milliseconds
        1714564800500.0,
        1714564800500000,  # microseconds
        1714564800500000000,  # nanoseconds
    ],
)
def test_timestamp_forms_give_the_same_instant(timestamp: str | float) -> None:
    assert accepted(NATIVE | {"timestamp": timestamp}).timestamp == pytest.approx(INSTANT, abs=1e-6)


@pytest.mark.parametrize(
    ("number", "seconds"),
    [
        (99_999_999_999, 99_999_999_999.0),  # largest read as seconds (year 5138)
        (100_000_000_000, 100_000_000.0),  # smallest read as milliseconds
        (99_999_999_999_999, 99_999_999_999.999),  # largest read as milliseconds
        (100_000_000_000_000, 100_000_000.0),  # smallest read as microseconds
        (100_000_000_000_000_000, 100_000_000.0),  # smallest read as nanoseconds
    ],
)
def test_epoch_unit_boundaries(number: int, seconds: float) -> None:
    assert accepted(NATIVE | {"timestamp": number}).timestamp == pytest.approx(seconds, abs=1e-4)


def test_whole_second_timestamps() -> None:
    assert accepted(NATIVE | {"timestamp": "2024-05-01T12:00:00Z"}).timestamp == 1714564800.0
    assert accepted(NATIVE | {"timestamp": 1714564800}).timestamp == 1714564800.0
    assert accepted(NATIVE | {"timestamp": 0}).timestamp == 0.0


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("stop", "stop"),
        ("STOP", "stop"),
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("eos", "stop"),
        ("length", "length"),
        ("max_tokens", "length"),
        ("MAX_TOKENS", "length"),
        ("content_filter", "content_filter"),
        ("safety", "content_filter"),
        ("SAFETY", "content_filter"),
        ("recitation", "content_filter"),
        ("tool_calls", "tool_call"),
        ("tool_use", "tool_call"),
        ("function_call", "tool_call"),
        ("error", "error"),
        ("something_new", None),
        ("", None),
    ],
)
def test_finish_reason_normalisation(raw: str, normalised: str | None) -> None:
    for record in (
        NATIVE | {"finish_reason": raw},
        OTEL_NEW | {"gen_ai.response.finish_reasons": [raw]},
    ):
        event = accepted(record)
        assert (event.finish_reason, event.finish_reason_raw) == (normalised, raw)


def test_label_length_limit_is_inclusive() -> None:
    assert accepted(NATIVE | {"endpoint": "e" * 256}).endpoint == "e" * 256


def test_size_cap_is_inclusive() -> None:
    raw = json.dumps(NATIVE).encode()
    assert isinstance(parse_event(raw, max_bytes=len(raw)), Event)
    assert parse_event(raw, max_bytes=len(raw) - 1) == Rejection(
        "too_large", f"message is larger than {len(raw) - 1} bytes"
    )


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason", "field"),
    [
        ({"model": "m", "output": "x"}, "missing_field", "endpoint"),
        ({"endpoint": "e", "output": "x"}, "missing_field", "model"),
        ({"endpoint": "e", "model": "m"}, "missing_field", "output"),
        ({"endpoint": None, "model": "m", "output": "x"}, "missing_field", "endpoint"),
        ({"kind": "feedback", "endpoint": "e", "model": "m"}, "missing_field", "value"),
        (NATIVE | {"feedback": {"name": "thumbs"}}, "missing_field", "feedback.value"),
        (NATIVE | {"endpoint": 3}, "bad_type", "endpoint"),
        (NATIVE | {"model": ["m"]}, "bad_type", "model"),
        (NATIVE | {"output": {"text": "x"}}, "bad_type", "output"),
        (NATIVE | {"kind": "summary"}, "bad_type", "kind"),
        (NATIVE | {"kind": 1}, "bad_type", "kind"),
        (NATIVE | {"id": 17}, "bad_type", "id"),
        (NATIVE | {"input": ["a"]}, "bad_type", "input"),
        (NATIVE | {"input_tokens": True}, "bad_type", "input_tokens"),
        (NATIVE | {"output_tokens": 1.5}, "bad_type", "output_tokens"),
        (NATIVE | {"output_tokens": "12"}, "bad_type", "output_tokens"),
        (NATIVE | {"latency_ms": False}, "bad_type", "latency_ms"),
        (NATIVE | {"latency_ms": "fast"}, "bad_type", "latency_ms"),
        (NATIVE | {"feedback": True}, "bad_type", "feedback"),
        (NATIVE | {"feedback": {"name": 1, "value": 1}}, "bad_type", "feedback.name"),
        (NATIVE | {"finish_reason": ["stop"]}, "bad_type", "finish_reason"),
        (NATIVE | {"attributes": [1]}, "bad_type", "attributes"),
        (NATIVE | {"timestamp": "yesterday"}, "bad_type", "timestamp"),
        (NATIVE | {"timestamp": "2024-13-01T00:00:00Z"}, "bad_type", "timestamp"),
        (NATIVE | {"timestamp": True}, "bad_type", "timestamp"),
        ({"kind": "feedback", "endpoint": "e", "model": "m", "value": True}, "bad_type", "value"),
        ({"kind": "feedback", "endpoint": "e", "model": "m", "value": "1"}, "bad_type", "value"),
        (NATIVE | {"endpoint": ""}, "out_of_range", "endpoint"),
        (NATIVE | {"endpoint": "e" * 257}, "out_of_range", "endpoint"),
        (NATIVE | {"model": "m" * 1000}, "out_of_range", "model"),
        (NATIVE | {"input_tokens": -1}, "out_of_range", "input_tokens"),
        (NATIVE | {"latency_ms": -0.5}, "out_of_range", "latency_ms"),
        (NATIVE | {"feedback": 1.01}, "out_of_range", "feedback"),
        (NATIVE | {"feedback": {"value": -2}}, "out_of_range", "feedback.value"),
        (NATIVE | {"timestamp": -1}, "out_of_range", "timestamp"),
        (NATIVE | {"timestamp": 1e300}, "out_of_range", "timestamp"),
        (NATIVE | {"timestamp": "1969-12-31T23:59:59Z"}, "out_of_range", "timestamp"),
        ({"kind": "feedback", "endpoint": "e", "model": "m", "value": 3}, "out_of_range", "value"),
    ],
)
def test_rejection_names_the_field(record: dict[str, Any], reason: str, field: str) -> None:
    rejection = rejected(record)
    assert rejection.reason == reason
    assert rejection.field == field
    assert rejection.detail.startswith(f"{field}: ")
    assert SECRET_OUTPUT not in rejection.detail
    assert SECRET_INPUT not in rejection.detail


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"driftmon.endpoint": 1, "model": "m", "output": "x"}, "driftmon.endpoint"),
        (OTEL_NEW | {"gen_ai.usage.output_tokens": "7"}, "gen_ai.usage.output_tokens"),
        (OTEL_NEW | {"gen_ai.response.finish_reasons": [1]}, "gen_ai.response.finish_reasons"),
        (OTEL_NEW | {"gen_ai.output.messages": {"parts": []}}, "gen_ai.output.messages"),
        (OTEL_NEW | {"gen_ai.output.messages": "[not json"}, "gen_ai.output.messages"),
        (OTEL_NEW | {"gen_ai.output.messages": [1]}, "gen_ai.output.messages[]"),
        (OTEL_NEW | {"gen_ai.output.messages": [{"parts": "x"}]}, "gen_ai.output.messages[].parts"),
        (
            OTEL_NEW | {"gen_ai.output.messages": [{"parts": [{"type": "text", "content": 1}]}]},
            "gen_ai.output.messages[].parts[].content",
        ),
        (
            {
                "driftmon.endpoint": "e",
                "gen_ai.response.model": "m",
                "gen_ai.completion.0.content": 1,
            },
            "gen_ai.completion.0.content",
        ),
    ],
)
def test_opentelemetry_rejection_names_the_attribute(record: dict[str, Any], field: str) -> None:
    rejection = rejected(record)
    assert rejection.reason == "bad_type"
    assert rejection.field == field
    assert rejection.detail.startswith(f"{field}: ")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"endpoint": "e", "model": "m", "output": "' + SECRET_OUTPUT.encode(),
        b"\xff\xfe{}",
        b'{"endpoint": "e", "model": "m", "output": "\xc3\x28"}',
        '{"output": "\ud800"}',
        b'{"endpoint": "e", "model": "m", "output": "", "latency_ms": NaN}',
        b'{"endpoint": "e", "model": "m", "output": "", "latency_ms": Infinity}',
        b'{"endpoint": "e", "model": "m", "output": "", "latency_ms": 1e400}',
        b"[" * 100_000 + b"]" * 100_000,
        b"{'endpoint': 'e'}",
    ],
)
def test_not_json(raw: bytes | str) -> None:
    rejection = parse_event(raw)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "not_json"
    assert rejection.field is None  # the record as a whole, not one field
    assert SECRET_OUTPUT not in rejection.detail


def test_message_that_is_not_bytes_or_str_is_rejected() -> None:
    assert parse_event(None) == Rejection("not_json", "message is NoneType, not bytes or str")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "json_type"),
    [
        (b"[]", "array"),
        (b'"' + SECRET_OUTPUT.encode() + b'"', "string"),
        (b"12", "integer"),
        (b"1.5", "number"),
        (b"null", "null"),
        (b"true", "boolean"),
    ],
)
def test_not_object(raw: bytes, json_type: str) -> None:
    rejection = parse_event(raw)
    assert rejection == Rejection("not_object", f"top level is {json_type}, expected object")
    assert rejection.field is None


def test_too_large_is_checked_before_parsing() -> None:
    assert parse_event(b"x" * 101, max_bytes=100).reason == "too_large"  # type: ignore[union-attr]
    # Counted in UTF-8 bytes, not characters: 60 characters of "é" are 120 bytes.
    text = '{"output": "' + "é" * 60 + '"}'
    assert len(text) < 100 < len(text.encode())
    assert parse_event(text, max_bytes=100) == Rejection(
        "too_large", "message is larger than 100 bytes"
    )
    lone_surrogates = "\ud800" * 60
    assert parse_event(lone_surrogates, max_bytes=100).reason == "too_large"  # type: ignore[union-attr]


# --- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

VALID_EVENTS: list[dict[str, Any]] = [
    NATIVE
    | {
        "id": "r1",
        "timestamp": "2024-05-01T12:00:00Z",
        "requested_model": "gpt-4o",
        "provider": "openai",
        "prompt_version": "v1",
        "input_tokens": 3,
        "output_tokens": 4,
        "finish_reason": "stop",
        "latency_ms": 5.5,
        "feedback": {"name": "thumbs", "value": 1},
        "attributes": {"a": 1},
    },
    OTEL_NEW | {"gen_ai.completion.0.content": SECRET_OUTPUT, "timestamp": 1714564800500},
    {"kind": "feedback", "endpoint": "e", "model": "m", "value": 0.5, "name": "n", "id": "r1"},
]
# Mutations may also add a key that the base event lacks.
KNOWN_KEYS = sorted({key for event in VALID_EVENTS for key in event})


def check_result(result: Event | Rejection) -> None:
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert result.field is None or result.detail.startswith(f"{result.field}: ")
        assert isinstance(result.detail, str) and result.detail
        assert SECRET_OUTPUT not in result.detail
        assert SECRET_INPUT not in result.detail
        return
    assert isinstance(result, Event)
    assert result.kind in ("completion", "feedback")
    assert type(result.endpoint) is str and 0 < len(result.endpoint) <= 256
    assert type(result.model) is str and 0 < len(result.model) <= 256
    assert type(result.output) is str
    assert result.finish_reason is None or result.finish_reason in FINISH_REASONS
    for count in (result.input_tokens, result.output_tokens):
        assert count is None or (type(count) is int and count >= 0)
    if result.feedback is not None:
        assert -1.0 <= result.feedback <= 1.0
    if result.latency_ms is not None:
        assert math.isfinite(result.latency_ms) and result.latency_ms >= 0
    if result.timestamp is not None:
        assert math.isfinite(result.timestamp) and result.timestamp >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(raw: bytes) -> None:
    check_result(parse_event(raw))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=100))
def test_random_text_never_raises(raw: str) -> None:
    check_result(parse_event(raw, max_bytes=150))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_never_raises(value: Any) -> None:
    check_result(parse_event(json.dumps(value)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_EVENTS), st.data())
def test_mutated_valid_events_never_raise(base: dict[str, Any], data: st.DataObject) -> None:
    record = dict(base)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        key = data.draw(st.sampled_from(KNOWN_KEYS))
        if data.draw(st.booleans()):
            record.pop(key, None)
        else:
            record[key] = data.draw(json_values)
    raw = orjson.dumps(record) if data.draw(st.booleans()) else json.dumps(record)
    check_result(parse_event(raw))


@pytest.mark.parametrize("base", VALID_EVENTS)
def test_valid_event_bases_are_accepted(base: dict[str, Any]) -> None:
    check_result(accepted(base))
