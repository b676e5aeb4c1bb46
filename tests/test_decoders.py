"""Decoders (bytes → events or rejections) and the pipeline's per-message entry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from driftmon.config import pipeline_config
from driftmon.core.events import Event, Rejection, parse_event
from driftmon.core.pipeline import Pipeline
from driftmon.decoders import DECODERS, decode, decoder
from driftmon.demo.synthetic import Upgrade, generate
from driftmon.settings import Settings

NATIVE = {"endpoint": "chat", "model": "m1", "output": "Hello."}
OTEL = {
    "driftmon.endpoint": "chat",
    "gen_ai.response.model": "m1",
    "gen_ai.completion.0.content": "Hello.",
    "gen_ai.usage.output_tokens": 2,
}


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(NATIVE).encode(),
        json.dumps(NATIVE),
        json.dumps(OTEL).encode(),
        b"not json",
        b"[1, 2]",
        json.dumps({"endpoint": "chat"}).encode(),
    ],
)
def test_native_decoder_is_the_spec_parser(raw: bytes | str) -> None:
    assert list(decode(raw)) == [parse_event(raw)]
    assert list(decode(raw, "native", max_bytes=10)) == [parse_event(raw, max_bytes=10)]


def test_flat_otel_keys_decode_to_the_same_event() -> None:
    (event,) = decode(json.dumps(OTEL))
    assert isinstance(event, Event)
    assert (event.endpoint, event.model, event.output, event.output_tokens) == (
        "chat",
        "m1",
        "Hello.",
        2,
    )


def test_an_unknown_format_is_an_error_naming_the_known_ones() -> None:
    assert set(DECODERS) == {"auto", "native", "otlp_json", "otlp_proto", "litellm"}
    with pytest.raises(ValueError, match=r"unknown input format 'otlp': one of \['auto', "):
        decoder("otlp")
    config = dataclasses.replace(pipeline_config(Settings()), input_format="otlp")
    with pytest.raises(ValueError, match="unknown input format"):
        Pipeline(config)


def _summary(outcome):  # type: ignore[no-untyped-def]
    return (
        outcome.event,
        outcome.rejection,
        outcome.features,
        [d.as_dict() for d in outcome.detections],
        outcome.embed,
    )


def test_process_message_on_native_records_is_process() -> None:
    lines = list(
        generate(6000, n_keys=2, seed=3, upgrade=Upgrade("sql-assistant", 4000), bad_line_every=53)
    )
    config = pipeline_config(Settings(embeddings={"enabled": False}))
    one, many = Pipeline(config), Pipeline(config)
    detections = 0
    for i, line in enumerate(lines):
        single = one.process(line, i)
        (outcome,) = many.process_message(line, i)
        assert _summary(outcome) == _summary(single)
        detections += len(single.detections)
    assert detections > 0
    assert one.rejected == many.rejected and sum(one.rejected.values()) > 0
    assert one.accepted == many.accepted
    assert one.monitor.snapshot() == many.monitor.snapshot()


def _jsonl(raw: bytes | str, *, max_bytes: int = 1_000_000) -> list[Event | Rejection]:
    """A multi-event format for the test: one native record per line."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if "explode" in text:
        raise RuntimeError(text)
    return [parse_event(line, max_bytes=max_bytes) for line in text.splitlines()]


def test_a_message_of_several_events_gives_one_outcome_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(DECODERS, "jsonl", lambda options: _jsonl)
    config = dataclasses.replace(pipeline_config(Settings()), input_format="jsonl")
    pipeline = Pipeline(config)
    message = "\n".join([json.dumps(NATIVE), "{bad", json.dumps(NATIVE | {"model": "m2"})])
    outcomes = pipeline.process_message(message.encode(), 7, default_timestamp=50.0)
    assert [o.rejection.reason if o.rejection else o.event.model for o in outcomes] == [  # type: ignore[union-attr]
        "m1",
        "not_json",
        "m2",
    ]
    assert pipeline.accepted == 2 and pipeline.rejected == {"not_json": 1}
    assert pipeline.monitor.get("chat", "m2").last_seen == 50.0  # type: ignore[union-attr]

    # A decoder that raises costs the message, once, without its text.
    (failed,) = pipeline.process_message(b"explode: secret text", 8)
    assert failed.rejection == Rejection("internal_error", "RuntimeError")
    assert pipeline.rejected == {"not_json": 1, "internal_error": 1}
