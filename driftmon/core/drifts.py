"""The drift lifecycle: a detection fires a drift, a later one re-fires it, quiet resolves it.

One :class:`DriftTracker` per monitor (per assigned partition in the daemon, one in
replay) holds the drifts active in that monitor, keyed by ``(endpoint, model, feature)``.
Time is passed in, in whatever unit the caller counts (the daemon: epoch seconds of the
wall clock; replay: the event index), so the tracker is as deterministic as its caller.

A drift resolves once its feature is quiet again, and never before ``min_active`` has passed
since it (re-)fired:

- a feature stream is quiet when it is no longer re-learning its baseline and has seen
  ``warmup_events + quiet_events`` events since its detection;
- the MEWMA's ``embedding`` is quiet once re-fitted (its detector exists again);
- a drift whose key or stream is gone (evicted) is quiet.

>>> tracker = DriftTracker()
>>> tracker.fire(ActiveDrift("chat", "m1", "output_chars", "adwin", 412.0, 1030.0, 5120, 120,
...                          detected_at=1_700_000_000.0, since=6123))
>>> sorted(tracker.active), tracker.changed
([('chat', 'm1', 'output_chars')], True)
>>> tracker.saved()
>>> [drift.since for drift in tracker.active.values()], tracker.changed
([6123], False)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from driftmon.core.monitor import Detection, Monitor

DriftKey = tuple[str, str, str]
"""(endpoint, model, feature): the identity of one drift (and of its alert)."""

DRIFT_KINDS: Final = ("drift", "input_drift")
"""A detection's cause (SPEC §7): the model changed, or the inputs did."""


class InvalidDriftEntry(ValueError):
    """A serialised drift (:meth:`ActiveDrift.from_json`) that is not one."""


@dataclass(frozen=True)
class ActiveDrift:
    """A detection whose drift is still active: saved with the state it was detected in, so
    a restarted daemon keeps re-sending the alert and resolves it, rather than letting it
    expire (or firing it again for a drift the restored state already knows)."""

    endpoint: str
    model: str
    feature: str  # a feature stream, or "embedding" for the MEWMA
    detector: str
    baseline: float
    current: float
    key_events: int  # the key's event count at the detection
    events_since_onset: int | None  # Detection.events_since_onset
    detected_at: float  # epoch seconds, event time when known: the alert's startsAt
    since: float  # the caller's time of the (re-)fire: min_active counts from here
    # Detection.kind: "drift" (the model) or "input_drift" (explained by the inputs).
    kind: str = "drift"

    @classmethod
    def from_detection(cls, det: Detection, *, detected_at: float, since: float) -> ActiveDrift:
        return cls(
            endpoint=det.endpoint,
            model=det.model,
            feature=det.feature,
            detector=det.detector,
            baseline=det.baseline,
            current=det.current,
            key_events=det.key_events,
            events_since_onset=det.events_since_onset,
            detected_at=detected_at,
            since=since,
            kind=det.kind,
        )

    @property
    def key(self) -> DriftKey:
        return (self.endpoint, self.model, self.feature)

    def to_json(self) -> dict[str, Any]:
        # JSON has no NaN: a value not known is null.
        return {
            name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in self.__dict__.items()
        }

    @classmethod
    def from_json(cls, raw: Any) -> ActiveDrift:
        """The inverse of :meth:`to_json`; :class:`InvalidDriftEntry` for anything else."""
        # Checkpoints written before drifts had a kind hold model drifts.
        if not isinstance(raw, dict) or set(raw) | {"kind"} != _DRIFT_FIELDS:
            raise InvalidDriftEntry(f"bad drift entry {raw!r}")
        kind = raw.get("kind", "drift")
        if kind not in DRIFT_KINDS:
            raise InvalidDriftEntry(f"bad drift entry {raw!r}")
        strings = ("endpoint", "model", "feature", "detector")
        numbers = ("baseline", "current", "detected_at", "since")
        if not all(isinstance(raw[name], str) for name in strings):
            raise InvalidDriftEntry(f"bad drift entry {raw!r}")
        if not all(raw[n] is None or type(raw[n]) in (int, float) for n in numbers):
            raise InvalidDriftEntry(f"bad drift entry {raw!r}")
        onset = raw["events_since_onset"]
        if type(raw["key_events"]) is not int or raw["detected_at"] is None:
            raise InvalidDriftEntry(f"bad drift entry {raw!r}")
        if onset is not None and type(onset) is not int:
            raise InvalidDriftEntry(f"bad drift entry {raw!r}")
        baseline, current, detected_at, since = (
            math.nan if raw[n] is None else float(raw[n]) for n in numbers
        )
        return cls(
            endpoint=raw["endpoint"],
            model=raw["model"],
            feature=raw["feature"],
            detector=raw["detector"],
            baseline=baseline,
            current=current,
            key_events=raw["key_events"],
            events_since_onset=onset,
            detected_at=detected_at,
            since=since,
            kind=kind,
        )


_DRIFT_FIELDS: Final = frozenset(ActiveDrift.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class ResolvePolicy:
    """When an active drift resolves (see the module docstring)."""

    warmup_events: int  # detectors.warmup_events
    quiet_events: int  # alertmanager.resolve_after_quiet_events
    min_active: float  # in the tracker's time unit; the daemon: alertmanager.min_active_seconds


def is_quiet(key: DriftKey, monitor: Monitor, policy: ResolvePolicy) -> bool:
    """Whether the drift ``key``'s feature is quiet again in ``monitor``."""
    endpoint, model, feature = key
    key_state = monitor.get(endpoint, model)
    if feature == "embedding":  # the MEWMA: quiet once re-fitted, re-calibrated
        emb = key_state.embedding if key_state else None
        return emb is None or emb.mewma is not None
    watched = key_state.streams.get(feature) if key_state else None
    return watched is None or (
        not watched.learning
        and watched.events_since_detection >= policy.warmup_events + policy.quiet_events
    )


class DriftTracker:
    """The drifts active in one monitor: fired by detections, resolved once quiet.

    ``changed`` says whether the set changed since the caller last saved it
    (:meth:`saved`): the daemon checkpoints a partition whose drifts changed even when no
    record arrived.
    """

    def __init__(self) -> None:
        self.active: dict[DriftKey, ActiveDrift] = {}
        self.changed = False

    def __len__(self) -> int:
        return len(self.active)

    def __contains__(self, key: object) -> bool:
        return key in self.active

    def get(self, key: DriftKey) -> ActiveDrift | None:
        return self.active.get(key)

    def fire(self, drift: ActiveDrift) -> None:
        """Make ``drift`` active; a re-fire replaces the drift (and restarts ``since``)."""
        self.active[drift.key] = drift
        self.changed = True

    def restore(self, drifts: Iterable[ActiveDrift]) -> None:
        """The drifts of a checkpoint: active, and unchanged since saved."""
        for drift in drifts:
            self.active[drift.key] = drift

    def saved(self) -> None:
        """The caller has saved the active drifts."""
        self.changed = False

    def resolve_quiet(
        self, monitor: Monitor, now: float, policy: ResolvePolicy
    ) -> list[ActiveDrift]:
        """Remove and return the drifts that are quiet in ``monitor`` and were active for
        at least ``policy.min_active`` before ``now``, in the order they became active."""
        resolved = [
            drift
            for key, drift in self.active.items()
            if is_quiet(key, monitor, policy) and now - drift.since >= policy.min_active
        ]
        for drift in resolved:
            del self.active[drift.key]
        if resolved:
            self.changed = True
        return resolved
