"""OTLP decoding against the real producers: the openai client instrumented by
opentelemetry-instrumentation-openai-v2, exported by the OTLP encoders (protobuf and
JSON); then bad input of every kind, and random OTLP structures."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftmon.config import pipeline_config
from driftmon.core.events import Event, Rejection
from driftmon.core.pipeline import Pipeline
from driftmon.core.registry import names
from driftmon.decoders import DecoderOptions, decoder
from driftmon.settings import Settings
from tests.otel_support import REPLY, SNAPSHOT, Telemetry, record

MODES = ("span_only", "event_only", "span_and_event", "no_content")


@pytest.fixture(scope="module")
def telemetry() -> dict[str, Telemetry]:
    return {mode: record(mode, calls=3) for mode in MODES}


def _events(items: list[Event | Rejection]) -> list[Event]:
    assert all(isinstance(i, Event) for i in items), items
    return items  # type: ignore[return-value]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("encoding", ["proto", "json"])
@pytest.mark.parametrize("fmt", ["auto", "fixed"])
def test_spans_of_the_real_instrumentation_become_events(
    telemetry: dict[str, Telemetry], mode: str, encoding: str, fmt: str
) -> None:
    t = telemetry[mode]
    raw = t.traces_proto() if encoding == "proto" else t.traces_json()
    decode = decoder("auto" if fmt == "auto" else f"otlp_{encoding}")
    events = _events(list(decode(raw)))
    assert len(events) == 3
    for event in events:
        assert (event.endpoint, event.model, event.requested_model) == (
            "support-chat",
            SNAPSHOT,
            "gpt-4o",
        )
        assert (event.input_tokens, event.output_tokens, event.finish_reason) == (9, 7, "stop")
        assert event.latency_ms is not None and 0 < event.latency_ms < 60_000
        assert event.timestamp is not None and event.timestamp > 1.7e9
        assert event.provider == "openai"
        assert event.attributes is not None
        assert event.attributes["system_fingerprint"] == "fp_test1"
        assert "gen_ai.input.messages" not in event.attributes
        captured = mode in ("span_only", "span_and_event")
        assert event.has_output is captured
        assert event.output == (REPLY if captured else "")


@pytest.mark.parametrize("mode", ["event_only", "span_and_event"])
@pytest.mark.parametrize("encoding", ["proto", "json"])
def test_details_events_carry_the_text_and_count_once_with_their_span(
    telemetry: dict[str, Telemetry], mode: str, encoding: str
) -> None:
    t = telemetry[mode]
    logs = t.logs_proto() if encoding == "proto" else t.logs_json()
    alone = _events(list(decoder("auto")(logs)))
    assert [(e.endpoint, e.model, e.output, e.output_tokens) for e in alone] == [
        ("support-chat", SNAPSHOT, REPLY, 7)
    ] * 3
    decode = decoder("auto")
    assert len(list(decode(t.traces_proto()))) == 3
    assert list(decode(logs)) == []  # the same responses: counted once
    assert decode.skipped["duplicate"] == 3  # type: ignore[attr-defined]
    assert len(list(decoder("auto", DecoderOptions(dedup_window=0))(logs))) == 3


def test_without_content_capture_there_are_no_logs(telemetry: dict[str, Telemetry]) -> None:
    assert telemetry["no_content"].logs == [] and telemetry["span_only"].logs == []


def test_content_less_events_feed_no_text_feature(telemetry: dict[str, Telemetry]) -> None:
    pipeline = Pipeline(pipeline_config(Settings()))
    outcomes = pipeline.process_message(telemetry["no_content"].traces_proto(), 0)
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert set(outcome.features) == {"output_tokens", "truncated", "latency"}
        assert not set(outcome.features) & set(names("text"))
    with_text = pipeline.process_message(telemetry["span_only"].traces_proto(), 1)
    assert {"output_chars", "empty_output", "output_tokens"} <= set(with_text[0].features)
    assert with_text[0].features["empty_output"] == 0.0


def test_endpoint_follows_endpoint_from(telemetry: dict[str, Telemetry]) -> None:
    raw = telemetry["no_content"].traces_json()
    envelope = json.loads(raw)
    span = envelope["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"].append({"key": "gen_ai.agent.name", "value": {"stringValue": "triage"}})
    events = _events(list(decoder("otlp_json")(json.dumps(envelope))))
    assert [e.endpoint for e in events] == ["triage", "support-chat", "support-chat"]
    only_driftmon = DecoderOptions(endpoint_from=("driftmon.endpoint",))
    (rejection, *_) = decoder("otlp_json", only_driftmon)(raw)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.field) == ("missing_field", "endpoint")


# -- bad input ------------------------------------------------------------------------
def _envelope(spans: list[dict[str, object]]) -> bytes:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "chat"}}]}
    return json.dumps(
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    ).encode()


def _span(**attributes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "gen_ai.operation.name": {"stringValue": "chat"},
        "gen_ai.request.model": {"stringValue": "m1"},
        "gen_ai.usage.output_tokens": {"intValue": "12"},
    }
    base.update(attributes)
    return {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000500000000",
        "attributes": [{"key": k, "value": v} for k, v in base.items()],
    }


def test_a_truncated_protobuf_batch_is_one_rejection(telemetry: dict[str, Telemetry]) -> None:
    raw = telemetry["span_only"].traces_proto()
    for cut in (len(raw) // 2, len(raw) - 3, 5):
        out = list(decoder("otlp_proto")(raw[:cut]))
        assert len(out) == 1 and isinstance(out[0], Rejection), cut
        assert out[0].reason == "not_protobuf"
    (auto,) = decoder("auto")(raw[: len(raw) // 2])
    assert isinstance(auto, Rejection) and auto.reason == "not_protobuf"


@pytest.mark.parametrize(
    "raw",
    [b'{"resourceSpans": []}', b'{"resourceLogs": [{"scopeLogs": [{"logRecords": []}]}]}'],
)
def test_an_envelope_without_records_is_rejected(raw: bytes) -> None:
    (out,) = decoder("auto")(raw)
    assert isinstance(out, Rejection) and out.reason == "missing_field"


def test_one_bad_span_is_rejected_alone() -> None:
    spans = [
        _span(),
        _span(**{"gen_ai.usage.output_tokens": {"intValue": "twelve"}}),
        _span(**{"gen_ai.usage.output_tokens": {"stringValue": "12"}}),
        _span(**{"gen_ai.request.model": {"intValue": "3"}}),
        _span(**{"gen_ai.output.messages": {"stringValue": "not json"}}),
        "not a span",
        _span(),
    ]
    out = list(decoder("otlp_json", DecoderOptions(dedup_window=0))(_envelope(spans)))  # type: ignore[arg-type]
    kinds = [o.reason if isinstance(o, Rejection) else "event" for o in out]
    assert kinds == ["event", "bad_type", "bad_type", "bad_type", "bad_type", "bad_type", "event"]
    assert out[1].field == "gen_ai.usage.output_tokens"  # type: ignore[union-attr]
    assert all("twelve" not in o.detail for o in out if isinstance(o, Rejection))


def test_ten_thousand_spans_in_one_message() -> None:
    spans = []
    for i in range(10_000):
        span = _span()
        span["spanId"] = f"{i:016x}"
        spans.append(span)
    out = list(decoder("otlp_json")(_envelope(spans), max_bytes=50_000_000))
    assert len(out) == 10_000 and all(isinstance(o, Event) for o in out)
    (too_large,) = decoder("otlp_json")(_envelope(spans))
    assert isinstance(too_large, Rejection) and too_large.reason == "too_large"


def test_huge_input_messages_are_not_decoded_or_kept() -> None:
    huge = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "x" * 500_000}]}])
    (event,) = decoder("otlp_json")(
        _envelope([_span(**{"gen_ai.input.messages": {"stringValue": huge}})])
    )
    assert isinstance(event, Event)
    assert event.input is None and "gen_ai.input.messages" not in (event.attributes or {})


def test_spans_that_are_not_answers_are_skipped_and_counted() -> None:
    http = {"name": "GET /", "spanId": "aaaaaaaaaaaaaaaa", "attributes": []}
    embeddings = _span(**{"gen_ai.operation.name": {"stringValue": "embeddings"}})
    decode = decoder("otlp_json")
    assert list(decode(_envelope([http, embeddings]))) == []
    assert decode.skipped["not_inference"] == 2  # type: ignore[attr-defined]


def test_an_old_choice_event_gives_its_text() -> None:
    record = {
        "eventName": "gen_ai.choice",
        "attributes": [
            {"key": "gen_ai.response.model", "value": {"stringValue": "m1"}},
        ],
        "body": {
            "kvlistValue": {
                "values": [
                    {"key": "finish_reason", "value": {"stringValue": "length"}},
                    {
                        "key": "message",
                        "value": {
                            "kvlistValue": {
                                "values": [{"key": "content", "value": {"stringValue": "Hi."}}]
                            }
                        },
                    },
                ]
            }
        },
    }
    raw = json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "c"}}]
                    },
                    "scopeLogs": [{"logRecords": [record]}],
                }
            ]
        }
    )
    (event,) = decoder("auto")(raw)
    assert isinstance(event, Event)
    assert (event.endpoint, event.model, event.output, event.finish_reason) == (
        "c",
        "m1",
        "Hi.",
        "length",
    )


_values = st.recursive(
    st.one_of(
        st.builds(lambda s: {"stringValue": s}, st.text(max_size=20)),
        st.builds(lambda s: {"intValue": s}, st.one_of(st.integers(), st.text(max_size=5))),
        st.builds(lambda s: {"doubleValue": s}, st.floats() | st.text(max_size=3)),
        st.builds(lambda s: {"boolValue": s}, st.booleans() | st.integers()),
        st.just({}),
        st.none(),
        st.integers(),
    ),
    lambda children: st.one_of(
        st.builds(lambda v: {"arrayValue": {"values": v}}, st.lists(children, max_size=3)),
        st.builds(
            lambda v: {"kvlistValue": {"values": v}},
            st.lists(st.fixed_dictionaries({"key": st.text(max_size=5), "value": children})),
        ),
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    [
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.operation.name",
        "gen_ai.usage.output_tokens",
        "gen_ai.response.finish_reasons",
        "gen_ai.output.messages",
        "service.name",
        "x",
    ]
)
_attributes = st.lists(st.fixed_dictionaries({"key": _keys, "value": _values}), max_size=6)
_spans = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"attributes": _attributes},
            optional={
                "startTimeUnixNano": st.one_of(st.integers(), st.text(max_size=4)),
                "endTimeUnixNano": st.integers(min_value=-(2**63), max_value=2**64),
                "spanId": st.text(max_size=20),
            },
        ),
        st.integers(),
        st.none(),
    ),
    max_size=4,
)
_envelopes = st.fixed_dictionaries(
    {
        "resourceSpans": st.lists(
            st.fixed_dictionaries(
                {
                    "resource": st.fixed_dictionaries({"attributes": _attributes}),
                    "scopeSpans": st.lists(st.fixed_dictionaries({"spans": _spans}), max_size=2),
                }
            ),
            max_size=2,
        )
    }
)


@settings(max_examples=300, deadline=None)
@given(envelope=_envelopes)
def test_random_otlp_structures_never_raise(envelope: dict[str, object]) -> None:
    raw = json.dumps(envelope).encode()
    pipeline = Pipeline(pipeline_config(Settings()))
    outcomes = pipeline.process_message(raw, 0)
    assert all(o.rejection is None or o.rejection.reason != "internal_error" for o in outcomes)
    # The same structure as protobuf, where it is one.
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    try:
        message = json_format.Parse(raw, ExportTraceServiceRequest())
    except (json_format.ParseError, ValueError, TypeError, OverflowError):
        return
    outcomes = pipeline.process_message(message.SerializeToString(), 1)
    assert all(o.rejection is None or o.rejection.reason != "internal_error" for o in outcomes)


def test_skipped_items_reach_the_metrics_once() -> None:
    """A response exported twice (the same span in two messages) counts once, and the
    skip is counted in driftmon_input_skipped_total{reason="duplicate"} by the refresh,
    once however often it runs."""
    from kafka import TopicPartition
    from prometheus_client import CollectorRegistry

    from driftmon.metrics import Metrics
    from driftmon.partitions import PartitionState
    from driftmon.refresh import MetricsRefresh

    telemetry = record("span_only", calls=2)
    settings = Settings(input={"format": "auto"})
    pipeline = Pipeline(pipeline_config(settings))
    message = telemetry.traces_proto()
    first = pipeline.process_message(message, 0)
    again = pipeline.process_message(message, 1)
    assert [o.event is not None for o in first] == [True, True]
    assert again == []  # both responses seen already
    registry = CollectorRegistry()
    refresh = MetricsRefresh(settings, Metrics(registry))
    state = PartitionState(pipeline)
    for _ in range(2):
        refresh.refresh(
            [(TopicPartition("llm", 0), state)],
            evicted=lambda gone: None,
            resolve=lambda s: None,
            highwater=lambda tp: None,
        )
    assert registry.get_sample_value("driftmon_input_skipped_total", {"reason": "duplicate"}) == 2
