"""Decoders: one message's bytes → the events (or rejections) it holds, one module per format.

A decoder is a callable ``decode(raw, *, max_bytes) -> Iterable[Event | Rejection]`` that
never raises for bad input: a malformed message, or a malformed item in it, becomes a
:class:`~driftmon.core.events.Rejection` with a reason code (SPEC §1). A format is one
module here and one entry in :data:`DECODERS` (a factory: decoders of OTLP and LiteLLM
remember recent ids to count a response once); :class:`driftmon.core.pipeline.Pipeline`
builds its decoder by name (``PipelineConfig.input_format``). Formats:

- ``native``: driftmon's JSON (SPEC §1), flat OpenTelemetry keys accepted;
- ``otlp_json`` / ``otlp_proto``: OTLP traces and logs envelopes (:mod:`.otlp`);
- ``litellm``: LiteLLM's StandardLoggingPayload (:mod:`.litellm`);
- ``auto``: sniffed per message: a JSON object holding ``resourceSpans``/``resourceLogs``
  is OTLP JSON, one holding ``call_type`` and ``startTime`` is LiteLLM, any other JSON is
  native; a message whose first byte is 0x0A (protobuf field 1, length-delimited) and is
  not JSON is OTLP protobuf.

Decoders keep counts of what they skip without it being an error (``skipped``: spans
that are not model answers, duplicates) for the caller to read.

>>> [type(item).__name__ for item in decode(b'{"endpoint": "a", "model": "m", "output": ""}')]
['Event']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from driftmon.core.events import Event, Rejection, event_from_record, parse_record
from driftmon.decoders import litellm, native, otlp

DEFAULT_ENDPOINT_FROM: Final = (
    "driftmon.endpoint",
    "gen_ai.agent.name",
    "service.name",
    "model_group",
    "metadata.tags.endpoint",
)


class Decoder(Protocol):
    """Turns one message into the events and rejections it holds, in order."""

    def __call__(
        self, raw: bytes | str, *, max_bytes: int = ...
    ) -> Iterable[Event | Rejection]: ...


@dataclass(frozen=True, slots=True)
class DecoderOptions:
    """``endpoint_from``: attribute names naming the endpoint, first found wins (span or
    record first, then resource). ``dedup_window``: ids remembered to count a response
    seen twice (a span and its details event) once; 0 turns it off."""

    endpoint_from: tuple[str, ...] = DEFAULT_ENDPOINT_FROM
    dedup_window: int = 10_000


class AutoDecoder:
    """Sniffs each message's format (see the module's docstring)."""

    def __init__(self, options: DecoderOptions) -> None:
        self.otlp = otlp.OtlpDecoder(
            options.endpoint_from, options.dedup_window, proto=True, json=True
        )
        self.litellm = litellm.LiteLLMDecoder(options.endpoint_from, options.dedup_window)

    @property
    def skipped(self) -> Counter[str]:
        return self.otlp.skipped + self.litellm.skipped

    def __call__(self, raw: bytes | str, *, max_bytes: int = 1_000_000) -> list[Event | Rejection]:
        if isinstance(raw, (bytes, bytearray)) and raw[:1] == b"\n" and raw.lstrip()[:1] != b"{":
            return self.otlp(bytes(raw), max_bytes=max_bytes)
        record = parse_record(raw, max_bytes=max_bytes)
        if isinstance(record, Rejection):
            return [record]
        if "resourceSpans" in record or "resourceLogs" in record:
            return self.otlp.decode_json(record)
        if litellm.is_payload(record):
            decoded = self.litellm.decode_payload(record)
            if isinstance(decoded, Event) and not self.litellm.dedup.first(decoded.id or ""):
                self.litellm.skipped["duplicate"] += 1
                return []
            return [decoded]
        return [event_from_record(record)]


DECODERS: Final[dict[str, Callable[[DecoderOptions], Decoder]]] = {
    "auto": AutoDecoder,
    "native": lambda options: native.decode,
    "otlp_json": lambda o: otlp.OtlpDecoder(
        o.endpoint_from, o.dedup_window, proto=False, json=True
    ),
    "otlp_proto": lambda o: otlp.OtlpDecoder(
        o.endpoint_from, o.dedup_window, proto=True, json=False
    ),
    "litellm": lambda o: litellm.LiteLLMDecoder(o.endpoint_from, o.dedup_window),
}
"""Input formats by name: each builds its decoder from the options."""


def decoder(fmt: str, options: DecoderOptions | None = None) -> Decoder:
    """A decoder of format ``fmt``; an unknown format is an error naming the known ones."""
    try:
        factory = DECODERS[fmt]
    except KeyError:
        raise ValueError(f"unknown input format {fmt!r}: one of {sorted(DECODERS)}") from None
    return factory(options or DecoderOptions())


def decode(
    raw: bytes | str, fmt: str = "native", *, max_bytes: int = 1_000_000
) -> Iterable[Event | Rejection]:
    """Decode one message of format ``fmt`` (a fresh decoder: nothing remembered)."""
    return decoder(fmt)(raw, max_bytes=max_bytes)
