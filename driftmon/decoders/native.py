"""The native format (SPEC §1): one JSON object per message, flat OpenTelemetry GenAI keys
accepted beside the native ones. The parsing itself is :func:`driftmon.core.events.parse_event`
(compiled with the per-event core).

>>> decode(b'{"endpoint": "chat", "model": "m1", "output": "Hi."}')[0].output
'Hi.'
>>> decode(b"[]")[0].reason
'not_object'
"""

from __future__ import annotations

from driftmon.core.events import Event, Rejection, parse_event


def decode(raw: bytes | str, *, max_bytes: int = 1_000_000) -> list[Event | Rejection]:
    """The message's one event, or the rejection saying why it is not one."""
    return [parse_event(raw, max_bytes=max_bytes)]
