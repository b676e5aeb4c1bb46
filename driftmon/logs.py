"""Logging set-up, done once at the entry point: JSON off a terminal, pretty on one.

driftmon's own logs go through structlog. The libraries' stdlib logs (kafka-python says
*why* a connection failed — a refused TLS certificate, a wrong SASL password — only
there, and silences itself with a NullHandler) are rendered the same way, from WARNING up:
their INFO level is one line per connection attempt. While a broker is down kafka-python
repeats the same few warnings several times a second: each (logger, message template) is
written at most once per ``REPEAT_WINDOW_SECONDS``, the next line carrying ``suppressed``,
the count of lines left out.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

LIBRARY_LEVEL = logging.WARNING
REPEAT_WINDOW_SECONDS = 30.0


class _DropSlowTaskWarnings(logging.Filter):
    """kafka-python warns each time its IO loop waited over 0.1 s for the GIL ("Task ...
    ran for 0.2s ... blocking the event loop"): under load that is a line every few
    seconds saying only that the CPU is busy, which ``driftmon_consumer_lag`` shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "kafka.net.selector" and str(record.msg).startswith("Task "))


class _RateLimitRepeats(logging.Filter):
    """One record per (logger, message template) per window; the next one let through says
    how many were dropped in between (as ``suppressed``)."""

    def __init__(
        self, window: float = REPEAT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()  # records come from kafka-python's IO threads too
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # → (last written, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            last, dropped = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.window:
                self._seen[key] = (last, dropped + 1)
                return False
            if len(self._seen) > 10_000:  # templates are few; bound it anyway
                self._seen.clear()
            self._seen[key] = (now, 0)
        if dropped:
            record.suppressed = dropped
        return True


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured:
    a caller (a test, an embedding program) may replace it, and a stream captured at
    configuration time may be closed by then."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR: Final = _CurrentStderr()


def configure(level: str = "info", fmt: str = "auto") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_STDERR),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=("suppressed",)),
                timestamper,
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(_DropSlowTaskWarnings())
    handler.addFilter(_RateLimitRepeats())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(LIBRARY_LEVEL, logging.getLevelNamesMapping()[level.upper()]))
