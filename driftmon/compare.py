"""``driftmon compare OLD NEW``: the version-transition comparison, offline, as a
pre-promotion gate.

Two sets of outputs — typically a golden set of prompts answered by the current and by the
candidate model — go through the same decoders and feature extractor as the daemon, and
through the same anytime-valid comparison as a live transition
(:mod:`driftmon.core.transitions`). When the two files share response ``id`` values (the
same prompt answered by both), answers are paired by id: a paired difference removes the
prompt's own variation, so far fewer answers are needed to call a change. Otherwise the
new file is compared with the old file's profile (snapshot mode), in file order.

Exit codes: 0 unchanged or changed (or still pending), 1 breaking, 2 bad input.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftmon.config import pipeline_config
from driftmon.core.events import Event
from driftmon.core.pipeline import Pipeline
from driftmon.core.transitions import Transition
from driftmon.settings import Settings

EXIT_OK = 0
EXIT_BREAKING = 1
EXIT_BAD_INPUT = 2


class CompareInputError(Exception):
    """A file that cannot be compared; the message says which and why."""


@dataclass
class _Side:
    path: str
    events: list[tuple[Event, dict[str, float]]] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    records: int = 0

    def models(self) -> Counter[str]:
        return Counter(e.model for e, _ in self.events if e.kind == "completion")


@dataclass
class Comparison:
    transitions: list[Transition]
    paired: bool
    old: _Side
    new: _Side
    unpaired: int = 0  # new answers without a partner of the same id (paired mode)

    def report(self) -> dict[str, Any]:
        return {
            "paired": self.paired,
            "unpaired": self.unpaired,
            "old": _side_report(self.old),
            "new": _side_report(self.new),
            "transitions": [t.report() for t in self.transitions],
        }

    @property
    def exit_code(self) -> int:
        return EXIT_BREAKING if any(t.verdict == "breaking" for t in self.transitions) else EXIT_OK


def _side_report(side: _Side) -> dict[str, Any]:
    return {
        "path": side.path,
        "records": side.records,
        "accepted": len(side.events),
        "rejected": dict(side.rejected),
        "models": dict(side.models()),
    }


def _read(path: str, pipeline: Pipeline) -> _Side:
    side = _Side(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CompareInputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    for index, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        side.records += 1
        for outcome in pipeline.process_message(line, index):
            if outcome.event is not None:
                side.events.append((outcome.event, outcome.features))
            elif outcome.rejection is not None:
                side.rejected[outcome.rejection.reason] += 1
    if not any(e.kind == "completion" for e, _ in side.events):
        reasons = ", ".join(f"{r}: {n}" for r, n in side.rejected.most_common()) or "empty"
        raise CompareInputError(f"{path}: no answer accepted ({side.records} records; {reasons})")
    return side


def compare(old_path: str, new_path: str, settings: Settings) -> Comparison:
    """Compare the two files per endpoint present in both."""
    config = pipeline_config(settings)
    reading = config.__class__(**{**_fields(config), "transitions": _off(config)})
    reader = Pipeline(reading)
    # One pipeline per file: its decoder counts a response seen twice once, and the
    # other file's answers are not repeats of it.
    old, new = _read(old_path, reader), _read(new_path, Pipeline(reading))
    endpoints = [e for e in _endpoints(new) if e in set(_endpoints(old))]
    if not endpoints:
        raise CompareInputError(
            f"no endpoint in both files (old: {sorted(set(_endpoints(old)))[:5]}, "
            f"new: {sorted(set(_endpoints(new)))[:5]})"
        )
    ids_old = {e.id for e, _ in old.events if e.id is not None}
    ids_new = [e.id for e, _ in new.events if e.id is not None]
    paired = bool(ids_new) and sum(i in ids_old for i in ids_new) >= 0.5 * len(ids_new)
    names = reader.extractor.feature_names
    transitions = []
    unpaired = 0
    for number, endpoint in enumerate(endpoints, 1):
        o = [(e, f) for e, f in old.events if e.endpoint == endpoint]
        n = [(e, f) for e, f in new.events if e.endpoint == endpoint]
        t = Transition(
            number,
            endpoint,
            _dominant(o),
            _dominant(n),
            "compare",
            None,
            tuple(x for x in names(endpoint) if x not in ("embedding_distance", "embedding")),
            _profile(o, count=not paired),
            None,
            config.transitions,
            None,
            config.transitions.stratify_by,
        )
        if paired:
            unpaired += _feed_pairs(t, o, n)
        else:
            for event, features in n:
                t.observe(True, event, features)
                if t.due():
                    t.update()
        t.update()
        transitions.append(t)
    return Comparison(transitions, paired, old, new, unpaired)


def _feed_pairs(
    t: Transition,
    old: list[tuple[Event, dict[str, float]]],
    new: list[tuple[Event, dict[str, float]]],
) -> int:
    """Feed the answers of both files that share an id; returns the new answers left
    without a partner (not compared: the report and the summary say how many)."""
    left = 0
    by_id: dict[str, tuple[Event, dict[str, float]]] = {}
    for event, features in old:
        if event.id is not None and event.kind == "completion":
            by_id.setdefault(event.id, (event, features))
    for event, features in new:
        if event.kind != "completion":
            continue
        partner = by_id.pop(event.id, None) if event.id is not None else None
        if partner is None:
            left += 1
            continue
        t.observe_pair(partner[0], partner[1], event, features)
        if t.due():
            t.update()
    return left


def _fields(config: Any) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _off(config: Any) -> Any:
    from dataclasses import replace

    return replace(config.transitions, enabled=False)


def _endpoints(side: _Side) -> list[str]:
    return [e for e, _ in Counter(ev.endpoint for ev, _ in side.events).most_common()]


def _dominant(events: list[tuple[Event, dict[str, float]]]) -> str:
    counts = Counter(e.model for e, _ in events if e.kind == "completion")
    return counts.most_common(1)[0][0] if counts else "unknown"


def _profile(
    events: list[tuple[Event, dict[str, float]]], count: bool
) -> tuple[int, dict[str, tuple[float, float, float]]]:
    """The old file's snapshot. When answers are paired they are counted as pairs, so the
    snapshot does not count them again (``count`` False)."""
    sums: dict[str, list[float]] = {}
    answers = 0
    for event, features in events:
        answers += event.kind == "completion"
        for name, value in features.items():
            if not math.isfinite(value):
                continue
            s = sums.setdefault(name, [0.0, 0.0, 0.0])
            s[0] += 1.0
            s[1] += value
            s[2] += value * value
    return answers if count else 0, {k: (v[0], v[1], v[2]) for k, v in sums.items()}
