"""Raw records → events → features → detections. Shared by replay and the daemon."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from driftmon.core.embeddings import Vector
from driftmon.core.events import Event, Rejection, parse_event
from driftmon.core.features import FeatureConfig, FeatureExtractor
from driftmon.core.inputs import Prompt
from driftmon.core.monitor import Detection, Monitor, MonitorConfig
from driftmon.core.transitions import Transition, TransitionConfig, TransitionTracker
from driftmon.decoders import DEFAULT_ENDPOINT_FROM, Decoder, DecoderOptions, decoder


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The core's whole configuration, plain values (``driftmon.config.pipeline_config``
    builds it from the settings).

    ``only_features``: watch only these features (None: all). ``max_message_bytes``: a
    larger record is rejected as ``too_large``. ``input_format``: the decoder
    :meth:`Pipeline.process_message` uses (:data:`driftmon.decoders.DECODERS`).
    """

    monitor: MonitorConfig
    features: FeatureConfig
    max_message_bytes: int = 1_000_000
    only_features: frozenset[str] | None = None
    input_format: str = "native"
    # Issue 13: how OTLP and LiteLLM inputs name the endpoint, and the ids remembered to
    # count a response seen twice (a span and its details event) once.
    endpoint_from: tuple[str, ...] = DEFAULT_ENDPOINT_FROM
    dedup_window: int = 10_000
    transitions: TransitionConfig = field(default_factory=TransitionConfig)


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
    # Version transitions whose verdict, confounding flag or mode changed on this event.
    transitions: list[Transition] = field(default_factory=list)


class Pipeline:
    """Holds the feature extractor, the monitor and the rejection counters."""

    def __init__(
        self,
        config: PipelineConfig,
        extractor: FeatureExtractor | None = None,
        sampler: EmbeddingSampler | None = None,
        sampler_clock: Callable[[], float] | None = None,
    ) -> None:
        """``sampler_clock`` is the time the sampler's budget (embeddings per second) is
        spent on. The daemon passes its monotonic clock: the budget is CPU time, and a
        backlog read at many times real speed must not get a budget in event time. Without
        one (replay), the event's timestamp, else its index, keeps runs reproducible."""
        self.config = config
        self.extractor = extractor or FeatureExtractor(config.features)
        self.sampler = sampler
        self._sampler_clock = sampler_clock
        self._only = config.only_features
        self._decode: Decoder = decoder(
            config.input_format, DecoderOptions(config.endpoint_from, config.dedup_window)
        )
        self.monitor = Monitor(config.monitor, feature_count=self._feature_count)
        if config.transitions.enabled:
            self.monitor.transitions = TransitionTracker(config.transitions)
        self._profile = self.monitor.profile
        self._attribution = config.monitor.attribution.enabled
        self.max_bytes = config.max_message_bytes
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        # Items of a message skipped without being an error (OTLP spans that are not model
        # answers, a response seen twice), as already counted by the metrics refresh.
        self.skipped_reported: Counter[str] = Counter()
        # The monitor's input-model errors (Monitor.input_errors) already counted.
        self.input_errors_reported: Counter[str] = Counter()
        self.embedding_errors: Counter[str] = Counter()

    def _feature_count(self, endpoint: str) -> int:
        names = self.extractor.feature_names(endpoint)
        if self._only is not None:
            names = tuple(n for n in names if n in self._only)
        # embedding_distance (two detectors) and the embedding's mewma.
        return len(names) + (2 if self.sampler is not None else 0)

    def _transition_features(self, endpoint: str) -> tuple[str, ...]:
        names = self.extractor.feature_names(endpoint)
        if self._only is not None:
            names = tuple(n for n in names if n in self._only)
        return names

    @property
    def skipped(self) -> Counter[str]:
        """What the decoder skipped, by reason (``not_inference``, ``duplicate``)."""
        skipped = getattr(self._decode, "skipped", None)
        return skipped if isinstance(skipped, Counter) else Counter()

    @property
    def transitions(self) -> TransitionTracker | None:
        """The version-transition tracker (None when disabled); it lives in the monitor so
        that it is saved and restored with it."""
        return self.monitor.transitions

    def process(
        self, raw: bytes | str, index: int = -1, default_timestamp: float | None = None
    ) -> Outcome:
        """Process one native record (one event); ``index`` is its position in the input
        (for reports). :meth:`process_message` takes any input format.

        Never raises for a record: any exception while decoding, featurising or detecting
        rejects it as ``internal_error`` (see :meth:`_internal_error`), so a poison record
        is counted and dead-lettered instead of stopping the daemon or the replay.
        """
        try:
            parsed = parse_event(raw, max_bytes=self.max_bytes)
        except Exception as exc:  # a bug or unforeseen input costs one record, not the stream
            return self._internal_error(exc)
        return self._process_decoded(parsed, index, default_timestamp)

    def process_message(
        self, raw: bytes | str, index: int = -1, default_timestamp: float | None = None
    ) -> list[Outcome]:
        """Process one message of the configured input format: one outcome per event or
        rejection it holds, in order, all at position ``index``. Never raises, as
        :meth:`process`: an exception while decoding rejects the whole message (one
        outcome), one while processing an event rejects that event."""
        try:
            decoded = list(self._decode(raw, max_bytes=self.max_bytes))
        except Exception as exc:  # a bug or unforeseen input costs one message
            return [self._internal_error(exc)]
        return [self._process_decoded(item, index, default_timestamp) for item in decoded]

    def _process_decoded(
        self, parsed: Event | Rejection, index: int, default_timestamp: float | None
    ) -> Outcome:
        if isinstance(parsed, Rejection):
            self.rejected[parsed.reason] += 1
            return Outcome(None, parsed, {}, [])
        try:
            features = self.extractor.extract(parsed)
            if self._only is not None:
                features = {k: v for k, v in features.items() if k in self._only}
            ts = parsed.timestamp if parsed.timestamp is not None else default_timestamp
            prompt: Prompt | None = None
            if self._attribution and parsed.kind == "completion":
                text, tokens, version = parsed.input, parsed.input_tokens, parsed.prompt_version
                if text is not None or tokens is not None or version is not None:
                    prompt = (text, tokens, version)
            # A key's event count is its answers: feedback events update its feedback
            # stream but are not answers (alert texts say "at event N of this key").
            detections = self.monitor.update(
                parsed.endpoint,
                parsed.model,
                features,
                ts,
                count_event=parsed.kind == "completion",
                prompt=prompt,
            )
            for d in detections:
                d.event_index = index
            tracker = self.monitor.transitions
            changed = (
                tracker.observe(parsed, features, ts, self._profile, self._transition_features)
                if tracker is not None
                else []
            )
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
        return Outcome(parsed, None, features, detections, embed, changed)

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
