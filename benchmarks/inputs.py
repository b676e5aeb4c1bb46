"""Decode rate of native, OTLP protobuf and OTLP JSON input, side by side (issue 13).

Batches of 100 spans as the openai-v2 instrumentation writes them (with content on the
span), built with opentelemetry-proto's classes; native: the same responses as one JSON
line each. Decoding only (the decoders of ``driftmon.decoders``, one core). Prints JSON.

    .venv/bin/python benchmarks/inputs.py [--spans 100] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from driftmon.decoders import DecoderOptions, decoder

TEXT = "Sure. Here is a short answer with a few sentences. " * 8


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def otlp_batch(spans: int, batch: int) -> ExportTraceServiceRequest:
    output = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": TEXT}]}])
    out = []
    for i in range(spans):
        attributes = [
            _kv("gen_ai.operation.name", "chat"),
            _kv("gen_ai.request.model", "gpt-4o"),
            _kv("gen_ai.provider.name", "openai"),
            _kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
            _kv("gen_ai.response.id", f"chatcmpl-{batch}-{i}"),
            _kv("gen_ai.usage.input_tokens", 120),
            _kv("gen_ai.usage.output_tokens", 90),
            _kv("gen_ai.output.messages", output),
            _kv("openai.response.system_fingerprint", "fp_1"),
        ]
        attributes.append(
            KeyValue(
                key="gen_ai.response.finish_reasons",
                value=AnyValue(array_value={"values": [AnyValue(string_value="stop")]}),
            )
        )
        out.append(
            Span(
                trace_id=(batch * spans + i).to_bytes(16, "big"),
                span_id=(batch * spans + i + 1).to_bytes(8, "big"),
                name="chat gpt-4o",
                start_time_unix_nano=1_700_000_000_000_000_000 + i,
                end_time_unix_nano=1_700_000_000_500_000_000 + i,
                attributes=attributes,
            )
        )
    resource = {"attributes": [_kv("service.name", "support-chat")]}
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=out)])]
    )


def native_lines(spans: int, batch: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "endpoint": "support-chat",
                "model": "gpt-4o-2024-08-06",
                "requested_model": "gpt-4o",
                "id": f"chatcmpl-{batch}-{i}",
                "output": TEXT,
                "input_tokens": 120,
                "output_tokens": 90,
                "finish_reason": "stop",
                "latency_ms": 500.0,
                "timestamp": 1_700_000_000.0,
            }
        ).encode()
        for i in range(spans)
    ]


def rate(decode: Callable[[bytes], object], messages: list[bytes], events: int) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for m in messages:
            decode(m)
        best = max(best, events / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=100)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    events = args.spans * args.batches
    requests = [otlp_batch(args.spans, b) for b in range(args.batches)]
    proto = [r.SerializeToString() for r in requests]
    as_json = [json_format.MessageToJson(r).encode() for r in requests]
    native = [line for b in range(args.batches) for line in native_lines(args.spans, b)]
    options = DecoderOptions(dedup_window=10_000)
    results = {
        "spans_per_batch": args.spans,
        "events": events,
        "events_per_second": {
            # A fresh decoder per pass: the dedup window must not see repeats.
            "native": rate(lambda m: decoder("native", options)(m), native, events),
            "native_via_auto": rate(decoder("auto", options), native, events),
            "otlp_proto": rate(lambda m: decoder("otlp_proto", options)(m), proto, events),
            "otlp_json": rate(lambda m: decoder("otlp_json", options)(m), as_json, events),
            "otlp_proto_via_auto": rate(lambda m: decoder("auto", options)(m), proto, events),
        },
    }
    results["events_per_second"] = {k: round(v) for k, v in results["events_per_second"].items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
