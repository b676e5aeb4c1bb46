"""One log line per detection (info level: never the output or prompt text)."""

from __future__ import annotations

import structlog

from driftmon.core.monitor import Detection
from driftmon.sinks import Origin, Sink

log = structlog.get_logger(__name__)


class LogSink(Sink):
    def add(self, detection: Detection, origin: Origin) -> None:
        log.info(
            "drift detected",
            endpoint=detection.endpoint,
            model=detection.model,
            feature=detection.feature,
            detector=detection.detector,
            baseline=round(detection.baseline, 4),
            current=round(detection.current, 4),
            events_since_onset=detection.events_since_onset,
            partition=origin.partition,
            offset=origin.offset,
        )
