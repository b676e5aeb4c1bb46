"""OTLP envelopes (what the OpenTelemetry Collector's Kafka exporter writes): traces and
logs, as protobuf (``otlp_proto``, the exporter's default) or JSON (``otlp_json``).

One message is one export batch: resources → scopes → spans or log records. Each GenAI
inference span, ``gen_ai.client.inference.operation.details`` event or old
``gen_ai.choice`` event becomes one event (or one rejection: a bad span does not cost its
batch). Other spans and log records (HTTP spans, application logs, embeddings and tool
calls) are not answers: they are skipped and counted in ``Decoder.skipped``. A message
that is not an OTLP envelope, or holds no span or log record at all, is one rejection.
A span and its details event (same trace and span id) count once, within
``dedup_window`` ids.

Protobuf is parsed by ``opentelemetry-proto``'s generated classes; which of traces and
logs a protobuf message is, is read from its first record (they share their outer layout).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from driftmon.core.events import Event, Rejection, parse_record
from driftmon.decoders.otel import SKIPPED_KEYS, Dedup, Item, dedup_key, is_inference, to_event

EMPTY_ENVELOPE: Final = "envelope holds no span and no log record"


class _BadValue(Exception):
    """An attribute value that is not what OTLP says (an intValue that is not a number)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class OtlpDecoder:
    """Decodes OTLP messages; ``proto``/``json`` say which encodings it accepts."""

    def __init__(
        self, endpoint_from: tuple[str, ...], dedup_window: int, *, proto: bool, json: bool
    ) -> None:
        self.endpoint_from = endpoint_from
        self.dedup = Dedup(dedup_window)
        self.proto = proto
        self.json = json
        self.skipped: Counter[str] = Counter()

    def __call__(self, raw: bytes | str, *, max_bytes: int = 1_000_000) -> list[Event | Rejection]:
        if self.json and (not self.proto or _looks_like_json(raw)):
            record = parse_record(raw, max_bytes=max_bytes)
            if isinstance(record, Rejection):
                return [record]
            return self.decode_json(record)
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if len(raw) > max_bytes:
            return [Rejection("too_large", f"message is larger than {max_bytes} bytes")]
        return self.decode_proto(raw)

    # -- protobuf ---------------------------------------------------------------------
    def decode_proto(self, raw: bytes) -> list[Event | Rejection]:
        try:
            traces = ExportTraceServiceRequest.FromString(raw)
        except (DecodeError, RecursionError):
            traces = None
        if traces is not None and _first_span_is_a_span(traces):
            return self._events(_proto_spans(traces))
        try:
            logs = ExportLogsServiceRequest.FromString(raw)
        except (DecodeError, RecursionError):
            return [Rejection("not_protobuf", "not an OTLP traces or logs protobuf message")]
        if not any(sl.log_records for rl in logs.resource_logs for sl in rl.scope_logs):
            return [Rejection("missing_field", EMPTY_ENVELOPE, "resourceSpans")]
        return self._events(_proto_logs(logs))

    # -- JSON -------------------------------------------------------------------------
    def decode_json(self, envelope: dict[str, Any]) -> list[Event | Rejection]:
        spans = envelope.get("resourceSpans")
        logs = envelope.get("resourceLogs")
        if spans is None and logs is None:
            return [Rejection("missing_field", "resourceSpans: missing", "resourceSpans")]
        out: list[Event | Rejection] = []
        seen = 0
        for key, scopes_key, items_key, walk in (
            ("resourceSpans", "scopeSpans", "spans", _json_span),
            ("resourceLogs", "scopeLogs", "logRecords", _json_log),
        ):
            resources = envelope.get(key)
            if resources is None:
                continue
            if type(resources) is not list:
                return [Rejection("bad_type", f"{key}: expected array", key)]
            for resource_entry in resources:
                try:
                    resource = _json_resource(resource_entry)
                    scopes = _json_list(resource_entry, scopes_key)
                except _BadValue as exc:
                    out.append(Rejection("bad_type", f"{exc.key}: {exc}", exc.key))
                    continue
                for scope in scopes:
                    try:
                        records = _json_list(scope, items_key)
                    except _BadValue as exc:
                        out.append(Rejection("bad_type", f"{exc.key}: {exc}", exc.key))
                        continue
                    seen += len(records)
                    out.extend(self._events(_json_items(records, resource, walk)))
        if not seen and not out:
            return [Rejection("missing_field", EMPTY_ENVELOPE, "resourceSpans")]
        return out

    # -- shared -------------------------------------------------------------------------
    def _events(self, items: Iterable[Item | Rejection]) -> list[Event | Rejection]:
        out: list[Event | Rejection] = []
        endpoint_from = self.endpoint_from
        for item in items:
            if isinstance(item, Rejection):
                out.append(item)
                continue
            if not is_inference(item):
                self.skipped["not_inference"] += 1
                continue
            decoded = to_event(item, endpoint_from)
            if isinstance(decoded, Event) and not self.dedup.first(dedup_key(item)):
                self.skipped["duplicate"] += 1
                continue
            out.append(decoded)
        return out


def _looks_like_json(raw: bytes | str) -> bool:
    head = raw.lstrip()[:1]
    return head in (b"{", b"[", "{", "[")


# -- protobuf walking ---------------------------------------------------------------------
def _first_span_is_a_span(request: ExportTraceServiceRequest) -> bool:
    """A logs message parsed as traces gives spans without ids or times."""
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                return bool(span.span_id or span.start_time_unix_nano or span.name)
    return False


def _proto_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "array_value":
        return [_proto_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _proto_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value
    return None


def _proto_attributes(attributes: Any) -> dict[str, Any]:
    return {kv.key: _proto_value(kv.value) for kv in attributes if kv.key not in SKIPPED_KEYS}


def _proto_spans(request: ExportTraceServiceRequest) -> Iterator[Item | Rejection]:
    for rs in request.resource_spans:
        resource = _proto_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield Item(
                    _proto_attributes(span.attributes),
                    resource,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    span.trace_id.hex(),
                    span.span_id.hex(),
                )


def _proto_logs(request: ExportLogsServiceRequest) -> Iterator[Item | Rejection]:
    for rl in request.resource_logs:
        resource = _proto_attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            for record in sl.log_records:
                attrs = _proto_attributes(record.attributes)
                yield Item(
                    attrs,
                    resource,
                    record.time_unix_nano or record.observed_time_unix_nano,
                    0,
                    record.trace_id.hex(),
                    record.span_id.hex(),
                    _event_name(record.event_name, attrs),
                    _proto_value(record.body) if record.HasField("body") else None,
                )


def _event_name(field: str, attrs: dict[str, Any]) -> str | None:
    """The record's event name (OTLP 1.5 field, or the older ``event.name`` attribute)."""
    if field:
        return field
    name = attrs.get("event.name")
    return name if type(name) is str else None


# -- JSON walking -------------------------------------------------------------------------
_SCALARS: Final = {"stringValue": str, "boolValue": bool}


def _json_value(key: str, value: Any) -> Any:
    if type(value) is not dict:
        raise _BadValue(key, "attribute value is not an object")
    for kind, inner in value.items():
        if kind == "stringValue" or kind == "boolValue":
            if type(inner) is not _SCALARS[kind]:
                raise _BadValue(key, f"{kind} has the wrong type")
            return inner
        if kind == "intValue":  # a string in OTLP JSON (64-bit), a number from some writers
            if type(inner) is int:
                return inner
            if type(inner) is str:
                try:
                    return int(inner)
                except ValueError:
                    raise _BadValue(key, "intValue is not an integer") from None
            raise _BadValue(key, "intValue is not an integer")
        if kind == "doubleValue":
            if type(inner) in (int, float):
                return float(inner)
            if type(inner) is str and inner in ("NaN", "Infinity", "-Infinity"):
                return float(inner.replace("Infinity", "inf"))
            raise _BadValue(key, "doubleValue is not a number")
        if kind == "arrayValue":
            return [_json_value(key, v) for v in _json_list(inner, "values")]
        if kind == "kvlistValue":
            return _json_attributes(_json_list(inner, "values"))
        if kind == "bytesValue":
            return inner
    return None


def _json_attributes(attributes: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in attributes:
        if type(kv) is not dict or type(kv.get("key")) is not str:
            raise _BadValue("attributes", "attribute without a string key")
        key = kv["key"]
        if key not in SKIPPED_KEYS:
            out[key] = _json_value(key, kv.get("value"))
    return out


def _json_list(parent: Any, key: str) -> list[Any]:
    if type(parent) is not dict:
        raise _BadValue(key, "parent is not an object")
    value = parent.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _BadValue(key, "expected array")
    return value


def _json_resource(entry: Any) -> dict[str, Any]:
    if type(entry) is not dict:
        raise _BadValue("resource", "expected object")
    resource = entry.get("resource")
    if resource is None:
        return {}
    return _json_attributes(_json_list(resource, "attributes"))


def _json_nanos(record: dict[str, Any], key: str) -> int:
    value = record.get(key)
    if value is None:
        return 0
    if type(value) is int:
        return value
    if type(value) is str:
        try:
            return int(value)
        except ValueError:
            pass
    raise _BadValue(key, "expected an integer (or a string of one)")


def _json_id(value: Any) -> str:
    """Hex, as OTLP JSON writes ids; protobuf's JSON mapping writes base64 instead."""
    if type(value) is not str:
        return ""
    if len(value) in (16, 32):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _json_span(record: dict[str, Any], resource: dict[str, Any]) -> Item:
    return Item(
        _json_attributes(_json_list(record, "attributes")),
        resource,
        _json_nanos(record, "startTimeUnixNano"),
        _json_nanos(record, "endTimeUnixNano"),
        _json_id(record.get("traceId")),
        _json_id(record.get("spanId")),
    )


def _json_log(record: dict[str, Any], resource: dict[str, Any]) -> Item:
    attrs = _json_attributes(_json_list(record, "attributes"))
    name = record.get("eventName")
    body = record.get("body")
    return Item(
        attrs,
        resource,
        _json_nanos(record, "timeUnixNano") or _json_nanos(record, "observedTimeUnixNano"),
        0,
        _json_id(record.get("traceId")),
        _json_id(record.get("spanId")),
        _event_name(name if type(name) is str else "", attrs),
        _json_value("body", body) if body else None,
    )


def _json_items(
    records: list[Any], resource: dict[str, Any], walk: Any
) -> Iterator[Item | Rejection]:
    for record in records:
        try:
            if type(record) is not dict:
                raise _BadValue("spans", "expected object")
            yield walk(record, resource)
        except _BadValue as exc:
            yield Rejection("bad_type", f"{exc.key}: {exc}", exc.key)
        except RecursionError:
            yield Rejection("out_of_range", "attributes nested too deeply", "attributes")


def envelope_kind(record: dict[str, Any]) -> str | None:
    """``otlp_json`` for an OTLP JSON envelope, else None (auto sniffing)."""
    return "otlp_json" if "resourceSpans" in record or "resourceLogs" in record else None
