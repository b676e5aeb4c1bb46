"""``driftmon replay``: the core over JSONL files, deterministic, with a report."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import structlog

from driftmon.changelog import one_line
from driftmon.config import pipeline_config
from driftmon.core.drifts import ActiveDrift, DriftTracker, ResolvePolicy
from driftmon.core.events import Event
from driftmon.core.monitor import Detection
from driftmon.core.pipeline import Pipeline
from driftmon.core.units import format_value
from driftmon.settings import Settings

if TYPE_CHECKING:
    from driftmon.embedding import Embedder

log = structlog.get_logger(__name__)


# The report lists this many rejected records (the summary fewer), details cut to this length.
MAX_REJECTED_EXAMPLES: Final = 20
MAX_DETAIL_CHARS: Final = 200
SUMMARY_REJECTED_EXAMPLES: Final = 10
# The progress line is redrawn this often; the replay loop hands it its counts every
# PROGRESS_EVERY records, which keeps it out of the per-record cost.
PROGRESS_SECONDS: Final = 0.25
PROGRESS_EVERY: Final = 64
JSONL_HINT: Final = "driftmon expects one JSON object per line (JSONL); convert with: "


@dataclass(frozen=True, slots=True)
class RejectedExample:
    """Where a rejected record is (``file``, 1-based ``line`` in that file, blank lines
    counted as an editor does) and why. Never the record's text."""

    file: str
    line: int
    reason: str
    field: str | None
    detail: str

    def report(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "reason": self.reason,
            "field": self.field,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Resolution:
    """A drift quiet again: at ``event_index``, the 0-based position of the record after
    which its feature was quiet (as ``event_index`` of a detection)."""

    endpoint: str
    model: str
    feature: str
    event_index: int

    def report(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "model": self.model,
            "feature": self.feature,
            "event_index": self.event_index,
        }


class _Drifts:
    """The drift lifecycle over the replayed stream, as in the daemon, with the event index
    as time. ``alertmanager.min_active_seconds`` does not apply: it keeps a drift of a fast
    backfill visible long enough for Prometheus to scrape it, and a replay has no scrape
    (nor a wall clock that means anything), so a drift resolves at the first record after
    which its feature is quiet (``detectors.warmup_events`` +
    ``alertmanager.resolve_after_quiet_events`` events of it since the detection, or the
    MEWMA re-fitted)."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.tracker = DriftTracker()
        self.monitor = pipeline.monitor
        self.policy = ResolvePolicy(
            settings.detectors.warmup_events,
            settings.alertmanager.resolve_after_quiet_events,
            min_active=0,
        )
        self.resolutions: list[Resolution] = []

    def fire(self, detections: list[Detection]) -> None:
        for det in detections:
            when = det.timestamp if det.timestamp is not None else float(det.event_index)
            self.tracker.fire(
                ActiveDrift.from_detection(det, detected_at=when, since=det.event_index)
            )

    def resolve(self, index: int) -> None:
        for drift in self.tracker.resolve_quiet(self.monitor, index, self.policy):
            self.resolutions.append(Resolution(drift.endpoint, drift.model, drift.feature, index))


@dataclass
class ReplayResult:
    records: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_examples: list[RejectedExample] = field(default_factory=list)
    # Answers (completion events) and feedback events per key, counted apart: feedback is
    # not an answer of the key.
    key_events: Counter[tuple[str, str]] = field(default_factory=Counter)
    key_feedback: Counter[tuple[str, str]] = field(default_factory=Counter)
    detections: list[Detection] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)
    seconds: float = 0.0
    embeddings: bool = False
    embedded: int = 0
    # One line per input that looks like JSON but not JSON Lines (a pretty-printed array…).
    hints: list[str] = field(default_factory=list)
    # Model changes on endpoints (driftmon.core.transitions), as report objects (SPEC §7).
    transitions: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The JSON report of SPEC §3 and §7."""
        return {
            "events": self.records,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_examples": [r.report() for r in self.rejected_examples],
            "embedded": self.embedded,
            "keys": [
                {"endpoint": ep, "model": m, "events": n, "feedback": self.key_feedback[(ep, m)]}
                for (ep, m), n in sorted((self.key_events + self._no_answers()).items())
            ],
            "detections": [d.report() for d in self.detections],
            "resolutions": [r.report() for r in self.resolutions],
            "transitions": self.transitions,
        }

    def _no_answers(self) -> Counter[tuple[str, str]]:
        """Keys that had feedback but no answer, at 0 answers (Counter addition drops 0)."""
        return Counter({k: 0 for k in self.key_feedback if k not in self.key_events})


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class _Progress:
    """A one-line progress display on a terminal: records, rate, detections, and the ETA
    when the input's size is known; silent otherwise.

    A thread redraws it every ``interval`` seconds, so it moves while the replay loop is
    blocked (an embedding batch, a slow pipe); the loop hands it its counts (:meth:`note`).
    """

    def __init__(
        self,
        total_bytes: int | None,
        stream: IO[str],
        interval: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total_bytes
        self.stream = stream
        self.enabled = stream.isatty()
        self.interval = interval
        self.clock = clock
        self.began = clock()
        self.done_bytes = self.records = self.detections = 0
        self.width = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.began = self.clock()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="replay-progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw()

    def note(self, done_bytes: int, records: int, detections: int) -> None:
        self.done_bytes, self.records, self.detections = done_bytes, records, detections

    def draw(self) -> None:
        done, records = self.done_bytes, self.records
        elapsed = max(self.clock() - self.began, 1e-9)
        rate = records / elapsed
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            head = f"[{bar:<30}] {frac:5.1%}"
            tail = f" ETA {_duration(elapsed * (self.total - done) / done)}" if done else ""
        else:
            head = f"{done / 1e6:8.1f} MB"
            tail = f" {_duration(elapsed)} elapsed"
        text = f"{head} {records:>10,} events {rate:>9,.0f}/s {self.detections:>4} detections{tail}"
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _check_inputs(paths: list[str]) -> int | None:
    """Raise for an input that cannot be read as a file; the total size when every input
    is a regular file (not stdin, a pipe or ``<(…)``), for the ETA."""
    total: int | None = 0
    for p in paths:
        if p == "-":
            total = None
            continue
        path = Path(p)
        if path.is_dir():
            raise IsADirectoryError(p)
        if not path.exists():
            raise FileNotFoundError(p)
        if total is not None and path.is_file():
            total += path.stat().st_size
        else:
            total = None
    return total


def _open(path: str) -> AbstractContextManager[IO[bytes]]:
    # stdin is not ours to close.
    return nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb")


def _frames(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Length-prefixed messages (``otlp_proto`` replay): a 4-byte big-endian length, then
    that many bytes, repeated; numbered from 1 (``line`` in the report is the frame's
    number). A file that ends inside a frame yields the short rest as its last message,
    which is then rejected as not protobuf."""
    number = 0
    while True:
        head = handle.read(4)
        if not head:
            return
        number += 1
        if len(head) < 4:
            yield number, head
            return
        yield number, handle.read(int.from_bytes(head, "big"))


def jsonl_hint(path: str, first_record: bytes, reason: str) -> str | None:
    """A hint when a file's first record says the file is JSON, not JSON Lines: a
    pretty-printed array (not_json, starting with ``[``), a pretty-printed document
    (``{`` alone on its line) or an array on one line (not_object)."""
    record = first_record.strip()
    head = record[:1]
    if not (
        (reason == "not_json" and (head == b"[" or record == b"{"))
        or (reason == "not_object" and head == b"[")
    ):
        return None
    name = "FILE" if path == "-" else shlex.quote(path)
    command = f"jq -c '.[]' {name}" if head == b"[" else f"jq -c . {name}"
    return f"{path}: {JSONL_HINT}{command}"


class _Embeddings:
    """Replay's embedding path: sampled outputs are embedded synchronously, in batches,
    in input order, so a report reproduces exactly."""

    def __init__(self, embedder: Embedder, pipeline: Pipeline, batch: int) -> None:
        self.embedder = embedder
        self.pipeline = pipeline
        self.batch = batch
        self.pending: list[tuple[int, str, str, str, float | None]] = []
        self.embedded = 0

    def add(self, index: int, event: Event) -> list[Detection]:
        self.pending.append((index, event.endpoint, event.model, event.output, event.timestamp))
        return self.flush() if len(self.pending) >= self.batch else []

    def flush(self) -> list[Detection]:
        if not self.pending:
            return []
        vectors = self.embedder.encode([p[3] for p in self.pending])
        found: list[Detection] = []
        for (index, endpoint, model, _, ts), vector in zip(self.pending, vectors, strict=True):
            found.extend(self.pipeline.process_embedding(endpoint, model, vector, index, ts))
        self.embedded += len(self.pending)
        self.pending.clear()
        return found


def replay(
    paths: list[str],
    settings: Settings,
    *,
    progress_stream: IO[str] | None = None,
    embedder: Embedder | None = None,
) -> ReplayResult:
    """Run the core over ``paths`` in order. Blank lines are not records.

    With ``embeddings.enabled`` the model is loaded (or ``embedder`` used) and sampled
    outputs are embedded; :class:`~driftmon.embedding.EmbeddingUnavailable` if it cannot be.
    ``FileNotFoundError`` or ``IsADirectoryError`` for an input that is not a file.
    """
    total = _check_inputs(paths)
    embeddings: _Embeddings | None = None
    if settings.embeddings.enabled:
        from driftmon.embedding import Sampler, load_embedder

        pipeline = Pipeline(
            pipeline_config(settings), sampler=Sampler.from_settings(settings.embeddings)
        )
        embeddings = _Embeddings(
            embedder or load_embedder(settings.embeddings),
            pipeline,
            batch=settings.embeddings.batch_size * 4,
        )
    else:
        pipeline = Pipeline(pipeline_config(settings))
    result = ReplayResult(embeddings=embeddings is not None)
    progress = _Progress(total, progress_stream or sys.stderr)
    start = time.perf_counter()
    progress.start()
    drifts = _Drifts(settings, pipeline)
    try:
        _feed(paths, pipeline, embeddings, drifts, result, progress)
        if embeddings is not None:
            late = embeddings.flush()
            drifts.fire(late)
            drifts.resolve(result.records - 1)
            result.detections.extend(late)
            # Embedding detections arrive a batch late: report everything in input order.
            result.detections.sort(key=lambda d: d.event_index)
            result.embedded = embeddings.embedded
        result.resolutions = drifts.resolutions
        tracker = pipeline.transitions
        if tracker is not None:
            tracker.flush()  # the events since the last statistics update count too
            result.transitions = [t.report() for t in tracker.transitions()]
    finally:
        progress.close()
    result.accepted = pipeline.accepted
    result.rejected = pipeline.rejected
    result.seconds = time.perf_counter() - start
    log.info(
        "replay finished",
        records=result.records,
        rejected=sum(pipeline.rejected.values()),
        keys=len(set(result.key_events) | set(result.key_feedback)),
        detections=len(result.detections),
        embedded=result.embedded,
        seconds=round(result.seconds, 2),
    )
    return result


def _feed(
    paths: list[str],
    pipeline: Pipeline,
    embeddings: _Embeddings | None,
    drifts: _Drifts,
    result: ReplayResult,
    progress: _Progress,
) -> None:
    """The replay loop: every record of every file through ``pipeline``, into ``result``."""
    index = 0
    done = 0
    show_progress = progress.enabled
    key_events = result.key_events
    key_feedback = result.key_feedback
    detections = result.detections
    examples = result.rejected_examples
    framed = pipeline.config.input_format == "otlp_proto"
    for path in paths:
        first_index = index
        with _open(path) as handle:
            records = _frames(handle) if framed else enumerate(handle, 1)
            for line_number, line in records:
                done += len(line)
                if not framed and not line.strip():
                    continue
                outcomes = pipeline.process_message(line, index)
                index += 1
                for outcome in outcomes:
                    rejection = outcome.rejection
                    if rejection is None:
                        event = outcome.event
                        if event is not None:
                            if event.kind == "feedback":
                                key_feedback[(event.endpoint, event.model)] += 1
                            else:
                                key_events[(event.endpoint, event.model)] += 1
                            if outcome.detections:
                                detections.extend(outcome.detections)
                                drifts.fire(outcome.detections)
                            if outcome.embed and embeddings is not None:
                                late = embeddings.add(index - 1, event)
                                if late:
                                    detections.extend(late)
                                    drifts.fire(late)
                            if drifts.tracker.active:
                                drifts.resolve(index - 1)
                    else:
                        if len(examples) < MAX_REJECTED_EXAMPLES:
                            examples.append(
                                RejectedExample(
                                    path,
                                    line_number,
                                    rejection.reason,
                                    rejection.field,
                                    rejection.detail[:MAX_DETAIL_CHARS],
                                )
                            )
                        if index - 1 == first_index and not framed:
                            hint = jsonl_hint(path, line, rejection.reason)
                            if hint is not None:
                                result.hints.append(hint)
                if show_progress and index % PROGRESS_EVERY == 0:
                    progress.note(done, index, len(detections))
    result.records = index


def summary_table(result: ReplayResult) -> str:
    """Human summary: keys, rejections (with the first rejected records) and detections."""
    embedded = (
        f", {result.embedded:,} outputs embedded"
        if result.embeddings
        else ", embeddings off (--embeddings to enable)"
    )
    out = [
        f"{result.records:,} records, {result.accepted:,} accepted, "
        f"{sum(result.rejected.values()):,} rejected in {result.seconds:.1f} s{embedded}",
    ]
    per_key = Counter((d.endpoint, d.model) for d in result.detections)
    keys = sorted(set(result.key_events) | set(result.key_feedback))
    if keys:
        out.append("")
        out.append(
            f"{'endpoint':<24} {'model':<32} {'answers':>9} {'feedback':>9} {'detections':>10}"
        )
    for ep, m in keys:
        out.append(
            f"{ep[:24]:<24} {m[:32]:<32} {result.key_events[(ep, m)]:>9,} "
            f"{result.key_feedback[(ep, m)]:>9,} {per_key[(ep, m)]:>10}"
        )
    if result.rejected:
        out.append("")
        out.append("rejected: " + ", ".join(f"{r}={n}" for r, n in sorted(result.rejected.items())))
        out.extend(result.hints)
        out.extend(_rejected_lines(result.rejected_examples))
    out.append("")
    if not result.detections:
        out.append("no drift detected")
    else:
        out.extend(_detection_lines(result.detections))
        inputs = sum(d.kind == "input_drift" for d in result.detections)
        out.append(
            f"{len(result.detections):,} detections: {len(result.detections) - inputs:,} "
            f"model drift, {inputs:,} input drift (the prompt mix had moved first: "
            "docs/attribution.md)"
        )
    if result.transitions:
        out.append("")
        out.append("model transitions (driftmon changelog REPORT.json prints the changelog):")
        out.extend(f"  {one_line(t)}" for t in result.transitions)
    return "\n".join(out)


def _rejected_lines(examples: list[RejectedExample]) -> list[str]:
    if not examples:
        return []
    files = {e.file for e in examples}
    shown = examples[:SUMMARY_REJECTED_EXAMPLES]
    more = f" ({len(examples)} in the --report)" if len(examples) > len(shown) else ""
    out = [f"first {len(shown)} rejected records{more}:"]
    for e in shown:
        where = f"{e.file}:{e.line}" if len(files) > 1 else f"line {e.line}"
        out.append(f"  {where:<12} {e.reason:<14} {e.field or '-':<20} {e.detail}")
    return out


def _detection_lines(detections: list[Detection]) -> list[str]:
    out = [
        f"{'event':>8} {'endpoint':<18} {'model':<24} {'feature':<20} {'detector':<12} "
        f"{'baseline':>18} {'current':>18} {'since onset':>11}"
    ]
    for d in detections:
        onset = "-" if d.events_since_onset is None else f"{d.events_since_onset:,}"
        out.append(
            f"{d.event_index:>8} {d.endpoint[:18]:<18} {d.model[:24]:<24} "
            f"{d.feature[:20]:<20} {d.detector:<12} "
            f"{format_value(d.feature, d.baseline):>18} {format_value(d.feature, d.current):>18} "
            f"{onset:>11}"
        )
    out.append("")
    out.append(
        "since onset: the key's values of that feature since the change began, as the "
        "detector estimates it"
    )
    return out


def write_report(result: ReplayResult, path: str) -> None:
    Path(path).write_text(json.dumps(result.report(), indent=1) + "\n")
