"""Logging set-up, done once at the entry point: JSON off a terminal, pretty on one.

driftmon's own logs go through structlog. The libraries' stdlib logs (kafka-python says
*why* a connection failed — a refused TLS certificate, a wrong SASL password — only
there, and silences itself with a NullHandler) are rendered the same way, from WARNING up:
their INFO level is one line per connection attempt.
"""

from __future__ import annotations

import logging
import sys

import structlog

LIBRARY_LEVEL = logging.WARNING


class _DropSlowTaskWarnings(logging.Filter):
    """kafka-python warns each time its IO loop waited over 0.1 s for the GIL ("Task ...
    ran for 0.2s ... blocking the event loop"): under load that is a line every few
    seconds saying only that the CPU is busy, which ``driftmon_consumer_lag`` shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "kafka.net.selector" and str(record.msg).startswith("Task "))


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(_DropSlowTaskWarnings())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(LIBRARY_LEVEL, logging.getLevelNamesMapping()[level.upper()]))
