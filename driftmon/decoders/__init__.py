"""Decoders: one message's bytes → the events (or rejections) it holds, one module per format.

A decoder is a function ``decode(raw, *, max_bytes) -> Iterable[Event | Rejection]`` that
never raises for bad input: a malformed message, or a malformed item in it, becomes a
:class:`~driftmon.core.events.Rejection` with a reason code (SPEC §1). A format is one
module here and one entry in :data:`DECODERS`; :class:`driftmon.core.pipeline.Pipeline`
picks its decoder by name (``PipelineConfig.input_format``) when it is built.

>>> [type(item).__name__ for item in decode(b'{"endpoint": "a", "model": "m", "output": ""}')]
['Event']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from driftmon.core.events import Event, Rejection
from driftmon.decoders import native


class Decoder(Protocol):
    """Turns one message into the events and rejections it holds, in order."""

    def __call__(
        self, raw: bytes | str, *, max_bytes: int = ...
    ) -> Iterable[Event | Rejection]: ...


DECODERS: Final[dict[str, Decoder]] = {
    "native": native.decode,
}
"""Input formats by name."""


def decoder(fmt: str) -> Decoder:
    """The decoder of format ``fmt``; an unknown format is an error naming the known ones."""
    try:
        return DECODERS[fmt]
    except KeyError:
        raise ValueError(f"unknown input format {fmt!r}: one of {sorted(DECODERS)}") from None


def decode(
    raw: bytes | str, fmt: str = "native", *, max_bytes: int = 1_000_000
) -> Iterable[Event | Rejection]:
    """Decode one message of format ``fmt``."""
    return decoder(fmt)(raw, max_bytes=max_bytes)
