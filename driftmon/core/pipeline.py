"""Raw records → events → features → detections. Shared by replay and the daemon."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from driftmon.core.detectors import DetectorConfig
from driftmon.core.events import Event, Rejection, parse_event
from driftmon.core.features import FeatureExtractor
from driftmon.core.monitor import Detection, Monitor, MonitorConfig
from driftmon.settings import Settings


def monitor_config(settings: Settings) -> MonitorConfig:
    d = settings.detectors
    return MonitorConfig(
        events_per_false_alarm=float(d.events_per_false_alarm),
        max_keys=settings.limits.max_keys,
        detector=DetectorConfig(
            warmup=d.warmup_events,
            k=d.page_hinkley_k,
            page_hinkley=d.page_hinkley,
            adwin=d.adwin,
        ),
    )


@dataclass(slots=True)
class Outcome:
    """What one record did: the accepted event (or the rejection) and any detections."""

    event: Event | None
    rejection: Rejection | None
    features: dict[str, float]
    detections: list[Detection]


class Pipeline:
    """Holds the feature extractor, the monitor and the rejection counters."""

    def __init__(self, settings: Settings, extractor: FeatureExtractor | None = None) -> None:
        self.settings = settings
        self.extractor = extractor or FeatureExtractor(settings)
        only = settings.detectors.features
        self._only = frozenset(only) if only is not None else None
        self.monitor = Monitor(monitor_config(settings), feature_count=self._feature_count)
        self.max_bytes = settings.kafka.max_message_bytes
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def _feature_count(self, endpoint: str) -> int:
        names = self.extractor.feature_names(endpoint)
        if self._only is not None:
            names = tuple(n for n in names if n in self._only)
        return len(names)

    def process(
        self, raw: bytes | str, index: int = -1, default_timestamp: float | None = None
    ) -> Outcome:
        """Process one record; ``index`` is its position in the input (for reports)."""
        parsed = parse_event(raw, max_bytes=self.max_bytes)
        if isinstance(parsed, Rejection):
            self.rejected[parsed.reason] += 1
            return Outcome(None, parsed, {}, [])
        self.accepted += 1
        features = self.extractor.extract(parsed)
        if self._only is not None:
            features = {k: v for k, v in features.items() if k in self._only}
        ts = parsed.timestamp if parsed.timestamp is not None else default_timestamp
        detections = self.monitor.update(parsed.endpoint, parsed.model, features, ts)
        for d in detections:
            d.event_index = index
        return Outcome(parsed, None, features, detections)
