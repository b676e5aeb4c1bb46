"""Raw records → events → features → detections. Shared by replay and the daemon."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from driftmon.core.detectors import DetectorConfig
from driftmon.core.embeddings import Vector
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


class EmbeddingSampler(Protocol):
    """Decides which events to embed (``driftmon.embedding.Sampler``); time passed in."""

    def decide(self, key: tuple[str, ...], event_id: str | int, now: float) -> bool: ...


@dataclass(slots=True)
class Outcome:
    """What one record did: the accepted event (or the rejection) and any detections.

    ``embed`` says the event was sampled for embedding: the caller embeds its output and
    hands the vector to :meth:`Pipeline.process_embedding`.
    """

    event: Event | None
    rejection: Rejection | None
    features: dict[str, float]
    detections: list[Detection]
    embed: bool = False


class Pipeline:
    """Holds the feature extractor, the monitor and the rejection counters."""

    def __init__(
        self,
        settings: Settings,
        extractor: FeatureExtractor | None = None,
        sampler: EmbeddingSampler | None = None,
        sampler_clock: Callable[[], float] | None = None,
    ) -> None:
        """``sampler_clock`` is the time the sampler's budget (embeddings per second) is
        spent on. The daemon passes its monotonic clock: the budget is CPU time, and a
        backlog read at many times real speed must not get a budget in event time. Without
        one (replay), the event's timestamp, else its index, keeps runs reproducible."""
        self.settings = settings
        self.extractor = extractor or FeatureExtractor(settings)
        self.sampler = sampler
        self._sampler_clock = sampler_clock
        only = settings.detectors.features
        self._only = frozenset(only) if only is not None else None
        self.monitor = Monitor(monitor_config(settings), feature_count=self._feature_count)
        self.max_bytes = settings.kafka.max_message_bytes
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.embedding_errors: Counter[str] = Counter()

    def _feature_count(self, endpoint: str) -> int:
        names = self.extractor.feature_names(endpoint)
        if self._only is not None:
            names = tuple(n for n in names if n in self._only)
        # embedding_distance (two detectors) and the embedding's mewma.
        return len(names) + (2 if self.sampler is not None else 0)

    def process(
        self, raw: bytes | str, index: int = -1, default_timestamp: float | None = None
    ) -> Outcome:
        """Process one record; ``index`` is its position in the input (for reports).

        Never raises for a record: any exception while decoding, featurising or detecting
        rejects it as ``internal_error`` (see :meth:`_internal_error`), so a poison record
        is counted and dead-lettered instead of stopping the daemon or the replay.
        """
        try:
            parsed = parse_event(raw, max_bytes=self.max_bytes)
            if isinstance(parsed, Rejection):
                self.rejected[parsed.reason] += 1
                return Outcome(None, parsed, {}, [])
            features = self.extractor.extract(parsed)
            if self._only is not None:
                features = {k: v for k, v in features.items() if k in self._only}
            ts = parsed.timestamp if parsed.timestamp is not None else default_timestamp
            # A key's event count is its answers: feedback events update its feedback
            # stream but are not answers (alert texts say "at event N of this key").
            detections = self.monitor.update(
                parsed.endpoint,
                parsed.model,
                features,
                ts,
                count_event=parsed.kind == "completion",
            )
            for d in detections:
                d.event_index = index
            embed = False
            if self.sampler is not None and parsed.kind == "completion" and parsed.output.strip():
                if self._sampler_clock is not None:
                    now = self._sampler_clock()
                else:
                    now = ts if ts is not None else float(index)
                key = (parsed.endpoint, parsed.model)
                embed = self.sampler.decide(key, parsed.id or index, now)
        except Exception as exc:  # a bug or unforeseen input costs one record, not the stream
            return self._internal_error(exc)
        self.accepted += 1
        return Outcome(parsed, None, features, detections, embed)

    def _internal_error(self, exc: Exception) -> Outcome:
        """Reject the record that raised ``exc``, with the exception's type only: its
        message may quote the output or the prompt.

        Nothing is rolled back. An exception from the parser or the extractor leaves the
        state untouched; one from inside ``monitor.update`` leaves what that update had done
        before it: the key exists (possibly evicting the least recently seen one) and counts
        the event, and the streams updated before the failing one keep its value (an alarm
        one of them raised on it is not reported). One value in a few streams does not move
        a detector's calibration; undoing it would need a copy of the key's state per event.
        """
        rejection = Rejection(reason="internal_error", detail=type(exc).__name__)
        self.rejected[rejection.reason] += 1
        return Outcome(None, rejection, {}, [])

    def process_embedding(
        self, endpoint: str, model: str, vector: Vector, index: int, now: float | None
    ) -> list[Detection]:
        """Feed the embedding of a sampled event (``index``: its position in the input).

        An exception while doing so returns no detection and is counted in
        ``embedding_errors`` by type (not in ``rejected``: the record was already accepted).
        """
        try:
            detections = self.monitor.update_embedding(endpoint, model, vector, now)
        except Exception as exc:  # one vector must not stop the stream
            self.embedding_errors[type(exc).__name__] += 1
            return []
        for d in detections:
            d.event_index = index
        return detections
