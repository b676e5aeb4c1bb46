"""Real OpenTelemetry GenAI telemetry for the decoder tests: the openai client, instrumented
by opentelemetry-instrumentation-openai-v2 (with opentelemetry-util-genai 1.1b0), against a
local fake OpenAI-compatible server; spans and logs encoded by the OTLP exporters' encoders.

``record(mode)`` instruments the client with the content-capture mode set (the handler
reads it when it is built), makes the calls and uninstruments it again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

REPLY = "Hello there. How can I help?"
SNAPSHOT = "gpt-4o-2024-08-06"


class _FakeOpenAI(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        body = json.dumps(
            {
                "id": f"chatcmpl-{self.server.calls}",  # type: ignore[attr-defined]
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": SNAPSHOT if request["model"] == "gpt-4o" else request["model"],
                "system_fingerprint": "fp_test1",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": REPLY},
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
            }
        ).encode()
        self.server.calls += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Telemetry:
    spans: list[Any]
    logs: list[Any]

    def traces_proto(self) -> bytes:
        return encode_spans(self.spans).SerializeToString()  # type: ignore[no-any-return]

    def traces_json(self) -> bytes:
        return json_format.MessageToJson(encode_spans(self.spans)).encode()

    def logs_proto(self) -> bytes:
        return encode_logs(self.logs).SerializeToString()  # type: ignore[no-any-return]

    def logs_json(self) -> bytes:
        return json_format.MessageToJson(encode_logs(self.logs)).encode()


def record(
    mode: str, calls: int = 1, model: str = "gpt-4o", service: str = "support-chat"
) -> Telemetry:
    """Telemetry of ``calls`` real chat completions in content-capture ``mode``."""
    with _env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", mode):
        recorder = _Recorder(service)
        try:
            return recorder.record(calls, model)
        finally:
            recorder.close()


class _Recorder:
    """One instrumented openai client, its fake server and in-memory exporters."""

    def __init__(self, service: str) -> None:
        import openai
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
        self.server.calls = 0  # type: ignore[attr-defined]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        resource = Resource.create({"service.name": service})
        self.spans = InMemorySpanExporter()
        self.logs = InMemoryLogRecordExporter()
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.instrumentor = OpenAIInstrumentor()
        self.instrumentor.instrument(
            tracer_provider=tracer_provider, logger_provider=logger_provider
        )
        self.client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.server.server_port}/v1", api_key="test"
        )

    def record(self, calls: int, model: str) -> Telemetry:
        for _ in range(calls):
            self.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi, a secret prompt"}]
            )
        return Telemetry(list(self.spans.get_finished_spans()), list(self.logs.get_finished_logs()))

    def close(self) -> None:
        self.instrumentor.uninstrument()
        self.server.shutdown()


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old
