"""Per-(endpoint, model) detector state: update, eviction, snapshot and restore.

Time is passed in by the caller; the core never reads the wall clock.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from driftmon.core.detectors import (
    CONTINUOUS_FEATURES,  # noqa: F401  (re-exported: where features get their kind)
    DetectorConfig,
    FeatureStream,
    feature_kind,  # noqa: F401
    update_streams,
)
from driftmon.core.embeddings import EmbeddingStream, Vector
from driftmon.core.inputs import AttributionConfig, InputModel, Prompt
from driftmon.core.transitions import TransitionTracker
from driftmon.core.units import to_display, unit

SNAPSHOT_VERSION = 4  # 2: warm-up buffers as float32, none for 0/1 features; 3: compiled
# FeatureStream fields, embedding_distance fed as normal scores; 4: KeyState.inputs
_RESTORABLE_VERSIONS = (3, SNAPSHOT_VERSION)  # a version-3 key restores without an input model


@dataclass(slots=True)
class Detection:
    """A detector firing on one feature of one key (SPEC §3 report object, plus extras).

    ``baseline`` and ``current`` are in the feature's own unit (characters, %, …; see
    :mod:`driftmon.core.units`); ``statistic`` and ``threshold`` are the detector's own,
    on the internal scale.
    """

    endpoint: str
    model: str
    feature: str
    detector: str
    baseline: float
    current: float
    statistic: float
    threshold: float
    key_events: int
    timestamp: float | None
    event_index: int = -1
    kind: str = "drift"
    # Values of the feature since the estimated start of the change (events; sampled
    # outputs for embedding_distance); None where the detector gives no estimate (MEWMA).
    events_since_onset: int | None = None

    @property
    def detection_id(self) -> str:
        """Stable across restarts, replays and hand-offs: the same key, feature, detector
        and key event count give the same id (sinks emit an id once)."""
        return detection_id(self.endpoint, self.model, self.feature, self.detector, self.key_events)

    def report(self) -> dict[str, Any]:
        """The replay report's detection object (SPEC §3, §7)."""
        return {
            "detection_id": self.detection_id,
            "event_index": self.event_index,
            "endpoint": self.endpoint,
            "model": self.model,
            "feature": self.feature,
            "detector": self.detector,
            "kind": self.kind,
            "baseline": round(self.baseline, 6),
            "current": round(self.current, 6),
            "unit": self.unit,
        }

    @property
    def unit(self) -> str:
        """The unit of ``baseline`` and ``current``: ``'characters'``, ``'%'``, …"""
        return unit(self.feature)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detection_id(endpoint: str, model: str, feature: str, detector: str, key_events: int) -> str:
    """16 hex digits of the SHA-1 of the fields, NUL-separated (no field holds a NUL)."""
    raw = "\0".join((endpoint, model, feature, detector, str(key_events)))
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(slots=True)
class KeyState:
    endpoint: str
    model: str
    target_arl: float
    events: int = 0
    last_seen: float | None = None
    streams: dict[str, FeatureStream] = field(default_factory=dict)
    embedding: EmbeddingStream | None = None
    # The input side (driftmon.core.inputs), once the key's events carry prompt information
    # and attribution is on.
    inputs: InputModel | None = None

    def input_drift(self, since_onset: int | None = None) -> bool:
        """Whether a detection now (``since_onset``: its values since the change began) is
        labelled ``input_drift``: the key's input channel has fired and its input model is
        not yet fitted again on the new prompt mix, the channel is at its confirmation
        level, or the change began before that fit (:meth:`InputModel.attributes_to_input`).
        """
        if self.inputs is None:
            return False
        onset = None if since_onset is None else self.events - since_onset + 1
        return self.inputs.attributes_to_input(onset)

    def display(self, feature: str, value: float) -> float:
        """A stream's value (as fed to its detectors) in the feature's own unit, for
        detections, metrics and views: counts from their log scale, 0/1 rates in percent
        (:func:`driftmon.core.units.to_display`).

        ``embedding_distance`` streams are fed normal scores (see
        :meth:`Monitor.update_embedding`); this maps them back to distances (NaN while
        the embedding reference is being learned again: there is no scale yet).
        """
        if feature != "embedding_distance":
            return to_display(feature, value)
        if self.embedding is None or not self.embedding.reference.calibrated:
            return math.nan
        return self.embedding.reference.score_distance(value)


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    events_per_false_alarm: float = 1_000_000.0
    max_keys: int = 10_000
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    # Not compared: a snapshot taken with other attribution settings (or before them)
    # restores, its keys' input models kept.
    attribution: AttributionConfig = field(default_factory=AttributionConfig, compare=False)


class Monitor:
    """Keyed feature streams, capped at ``max_keys`` with least-recently-seen eviction.

    ``feature_count(endpoint)`` tells how many features an endpoint can produce; the key's
    false-alarm budget is split evenly over all of them and over both detectors.
    """

    def __init__(self, config: MonitorConfig, feature_count: Callable[[str], int]) -> None:
        self.config = config
        self._feature_count = feature_count
        self._keys: OrderedDict[tuple[str, str], KeyState] = OrderedDict()
        self.keys_evicted = 0
        # Version transitions (driftmon.core.transitions), set by the pipeline; saved and
        # restored with the keys so a transition after a restart keeps its baseline.
        self.transitions: TransitionTracker | None = None
        # Only the identities: a flood of new keys between two drains must not keep every
        # evicted key's detector state alive (memory bounded by max_keys, not by churn).
        self._evicted: list[tuple[str, str]] = []
        # Exceptions raised by keys' input models (driftmon.core.inputs), by type: the key's
        # input model was dropped and started again; its detections went on as "drift".
        self.input_errors: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._keys)

    def key_states(self) -> list[KeyState]:
        return list(self._keys.values())

    def recent_key_states(self, n: int) -> list[KeyState]:
        """The ``n`` most recently seen keys, most recent first."""
        out: list[KeyState] = []
        for state in reversed(self._keys.values()):
            if len(out) >= n:
                break
            out.append(state)
        return out

    def get(self, endpoint: str, model: str) -> KeyState | None:
        return self._keys.get((endpoint, model))

    def profile(
        self, endpoint: str, model: str
    ) -> tuple[int, dict[str, tuple[float, float, float]]] | None:
        """A key's behavioural snapshot for version transitions: its event count and, per
        feature, ``(n, sum, sum of squares)`` of the values its detectors' reference holds
        (the reference and the quiet block being gathered for it; the warm-up values
        while learning), in the features' own units. None for a key not monitored."""
        state = self._keys.get((endpoint, model))
        if state is None:
            return None
        out: dict[str, tuple[float, float, float]] = {}
        for name, s in state.streams.items():
            n, total, squares = s.raw_moments()
            # 0/1 values: squares are the values
            out[name] = (n, total, total if s.kind == "binary" else squares)
        return state.events, out

    def drain_evicted(self) -> list[tuple[str, str]]:
        """``(endpoint, model)`` of the keys evicted since the last call, oldest first
        (the daemon drops their drift series and sampler state)."""
        out, self._evicted = self._evicted, []
        return out

    def _key(self, endpoint: str, model: str, now: float | None) -> KeyState:
        keys = self._keys
        k = (endpoint, model)
        state = keys.get(k)
        if state is None:
            cfg = self.config
            n_detectors = max(1, self._feature_count(endpoint)) * max(
                1, int(cfg.detector.page_hinkley) + int(cfg.detector.adwin)
            )
            state = KeyState(endpoint, model, cfg.events_per_false_alarm * n_detectors)
            keys[k] = state
            while len(keys) > cfg.max_keys:
                _, old = keys.popitem(last=False)
                self.keys_evicted += 1
                self._evicted.append((old.endpoint, old.model))
        else:
            keys.move_to_end(k)
        state.last_seen = now
        return state

    def update(
        self,
        endpoint: str,
        model: str,
        features: dict[str, float],
        now: float | None,
        *,
        count_event: bool = True,
        prompt: Prompt | None = None,
    ) -> list[Detection]:
        """Feed one event's features to its key; returns the detections it triggered.

        ``prompt``: what the event tells about its prompt, ``(input, input_tokens,
        prompt_version)`` (None when it carries none of them, or attribution is off); its
        features are computed by the key's input model, a block of events at a time. A
        detection is of kind ``input_drift`` when the key's input channel fired at or before
        it (:meth:`KeyState.input_drift`), else ``drift``.
        """
        state = self._key(endpoint, model, now)
        if count_event:
            state.events += 1
        alarms = update_streams(state.streams, features, state.target_arl, self.config.detector)
        if prompt is not None and self.config.attribution.enabled:
            # Inline, not a method: it runs on every event that carries a prompt.
            try:
                inputs = state.inputs
                if inputs is None:
                    inputs = state.inputs = InputModel(self.config.attribution)
                inputs.observe(prompt, features, state.events)
                if inputs.rebaseline_due:
                    self._rebaseline(state)
            except Exception as exc:  # the input side must never cost the output side its
                # detections: the key's input model starts again, the error is counted
                state.inputs = None
                self.input_errors[type(exc).__name__] += 1
        if not alarms:
            return []
        since = [a.since_onset for a in alarms if a.since_onset >= 0]
        kind = "input_drift" if self._input_drift(state, max(since, default=None)) else "drift"
        return [
            Detection(
                endpoint,
                model,
                a.feature,
                a.detector,
                state.display(a.feature, a.baseline),
                state.display(a.feature, a.current),
                a.statistic,
                a.threshold,
                state.events,
                now,
                kind=kind,
                events_since_onset=a.since_onset if a.since_onset >= 0 else None,
            )
            for a in alarms
        ]

    def _input_drift(self, state: KeyState, since_onset: int | None = None) -> bool:
        try:
            drift = state.input_drift(since_onset)
            if state.inputs is not None and state.inputs.rebaseline_due:
                self._rebaseline(state)
            return drift
        except Exception as exc:  # as in update
            state.inputs = None
            self.input_errors[type(exc).__name__] += 1
            return False

    @staticmethod
    def _rebaseline(state: KeyState) -> None:
        """The key's input model is fitted on the new prompt mix after an input alarm: its
        output detectors learn their reference again too, so a feature the mix moved that
        has not fired yet does not page later as a model change."""
        assert state.inputs is not None
        state.inputs.rebaseline_due = False
        for stream in state.streams.values():
            stream.relearn()
        if state.embedding is not None:
            state.embedding.relearn()

    def update_embedding(
        self, endpoint: str, model: str, vector: Vector, now: float | None
    ) -> list[Detection]:
        """Feed one sampled output embedding of a key.

        Its Mahalanobis distance to the key's reference is the ``embedding_distance``
        feature (Page-Hinkley and ADWIN like any other), fed as its normal score against
        the reference's held-out distances (:attr:`EmbeddingStep.scores`: the held-out
        ones at once when the reference is calibrated, then one per vector), since the
        distance's own long lower tail defeats the detectors' calibration; like every
        detection, it reports its baseline and current value in display units, here
        mapped back to distances (before the reference is re-learned). The vector
        itself feeds the ``mewma`` detector (feature ``embedding``). A detection by
        either re-learns both, since the distance is measured against the embedding
        reference.
        """
        state = self._key(endpoint, model, now)
        emb = state.embedding
        if emb is None:
            emb = state.embedding = EmbeddingStream(state.target_arl)
        mewma = emb.mewma  # update() replaces it when it fires
        step = emb.update(vector)
        found: list[Detection] = []
        if step.drift and mewma is not None:
            stat, threshold = mewma.statistic, mewma.threshold
            found.append(
                Detection(
                    endpoint,
                    model,
                    "embedding",
                    "mewma",
                    threshold,
                    stat,
                    stat,
                    threshold,
                    state.events,
                    now,
                    kind="input_drift" if self._input_drift(state) else "drift",
                )
            )
            distance_stream = state.streams.get("embedding_distance")
            if distance_stream is not None:
                distance_stream.relearn()
        elif step.scores:
            for score in step.scores:
                found = self.update(
                    endpoint, model, {"embedding_distance": score}, now, count_event=False
                )
                if found:
                    break
            if found:
                emb.relearn()
        return found

    # -- persistence ----------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole state, version-stamped. Pickle: checkpoints are local, trusted files."""
        payload = {
            "version": SNAPSHOT_VERSION,
            "config": self.config,
            "keys": self._keys,
            "keys_evicted": self.keys_evicted,
            "transitions": self.transitions,
        }
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot taken by :meth:`snapshot`."""
        try:
            payload = pickle.loads(data)
        except Exception as exc:  # e.g. a snapshot of classes laid out differently
            raise ValueError(f"snapshot unreadable ({type(exc).__name__}: {exc})") from exc
        version = payload.get("version") if isinstance(payload, dict) else None
        if version not in _RESTORABLE_VERSIONS:
            raise ValueError(
                f"snapshot version {version!r} is not {SNAPSHOT_VERSION}: start from scratch "
                "or replay from the topic's retention"
            )
        if payload["config"] != self.config:
            raise ValueError("snapshot was taken with other detector settings")
        keys: OrderedDict[tuple[str, str], KeyState] = payload["keys"]
        for state in keys.values():
            if version == 3 or not self.config.attribution.enabled:
                state.inputs = None  # version 3 predates the slot; off now: not kept
            elif state.inputs is not None:
                state.inputs.config = self.config.attribution
        self._keys = keys
        self.keys_evicted = payload["keys_evicted"]
        saved = payload.get("transitions")
        if self.transitions is not None and isinstance(saved, TransitionTracker):
            saved.adopt_config(self.transitions.config)
            self.transitions = saved
        self._evicted = []
