"""``driftmon replay``: the core over JSONL files, deterministic, with a report."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from driftmon.core.events import Event
from driftmon.core.monitor import Detection
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings

if TYPE_CHECKING:
    from driftmon.embedding import Embedder

log = structlog.get_logger(__name__)


@dataclass
class ReplayResult:
    records: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    key_events: Counter[tuple[str, str]] = field(default_factory=Counter)
    detections: list[Detection] = field(default_factory=list)
    seconds: float = 0.0
    embedded: int = 0

    def report(self) -> dict[str, Any]:
        """The JSON report of SPEC §3."""
        return {
            "events": self.records,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "keys": [
                {"endpoint": ep, "model": m, "events": n}
                for (ep, m), n in sorted(self.key_events.items())
            ],
            "detections": [d.report() for d in self.detections],
        }


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total_bytes: int | None, stream: IO[str]) -> None:
        self.total = total_bytes
        self.stream = stream
        self.enabled = stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done_bytes: int, records: int, detections: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.2:
            return
        self.last = now
        rate = records / max(now - self.start, 1e-9)
        if self.total:
            frac = min(done_bytes / self.total, 1.0)
            bar = "#" * int(frac * 30)
            head = f"[{bar:<30}] {frac:5.1%}"
        else:
            head = f"{done_bytes / 1e6:8.1f} MB"
        self.stream.write(
            f"\r{head} {records:>10,} events {rate:>9,.0f}/s {detections:>4} detections"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()


def _lines(paths: list[str]) -> Iterator[tuple[bytes, int]]:
    """(line, bytes read so far) for every line of every file, in order."""
    done = 0
    for path in paths:
        if path == "-":
            handle: IO[bytes] = sys.stdin.buffer
            for line in handle:
                done += len(line)
                yield line, done
        else:
            with open(path, "rb") as handle:
                for line in handle:
                    done += len(line)
                    yield line, done


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
    """
    for p in paths:
        if p != "-" and not Path(p).is_file():
            raise FileNotFoundError(p)
    total = None if "-" in paths else sum(os.path.getsize(p) for p in paths)
    progress = _Progress(total, progress_stream or sys.stderr)
    embeddings: _Embeddings | None = None
    if settings.embeddings.enabled:
        from driftmon.embedding import Sampler, load_embedder

        pipeline = Pipeline(settings, sampler=Sampler.from_settings(settings.embeddings))
        embeddings = _Embeddings(
            embedder or load_embedder(settings.embeddings),
            pipeline,
            batch=settings.embeddings.batch_size * 4,
        )
    else:
        pipeline = Pipeline(settings)
    result = ReplayResult()
    start = time.perf_counter()
    index = 0
    key_events = result.key_events
    detections = result.detections
    for line, done in _lines(paths):
        if not line.strip():
            continue
        outcome = pipeline.process(line, index)
        index += 1
        event = outcome.event
        if event is not None:
            key_events[(event.endpoint, event.model)] += 1
        if outcome.detections:
            detections.extend(outcome.detections)
        if outcome.embed and embeddings is not None and event is not None:
            detections.extend(embeddings.add(index - 1, event))
        if index % 4096 == 0:
            progress.update(done, index, len(detections))
    if embeddings is not None:
        detections.extend(embeddings.flush())
        # Embedding detections arrive a batch late: report everything in input order.
        detections.sort(key=lambda d: d.event_index)
        result.embedded = embeddings.embedded
    progress.close()
    result.records = index
    result.accepted = pipeline.accepted
    result.rejected = pipeline.rejected
    result.seconds = time.perf_counter() - start
    log.info(
        "replay finished",
        records=index,
        rejected=sum(pipeline.rejected.values()),
        keys=len(key_events),
        detections=len(detections),
        embedded=result.embedded,
        seconds=round(result.seconds, 2),
    )
    return result


def summary_table(result: ReplayResult) -> str:
    """Human summary: keys, rejections and detections."""
    out = [
        f"{result.records:,} records, {result.accepted:,} accepted, "
        f"{sum(result.rejected.values()):,} rejected in {result.seconds:.1f} s"
        + (f", {result.embedded:,} outputs embedded" if result.embedded else ""),
    ]
    per_key = Counter((d.endpoint, d.model) for d in result.detections)
    out.append("")
    out.append(f"{'endpoint':<24} {'model':<32} {'events':>9} {'detections':>10}")
    for (ep, m), n in sorted(result.key_events.items()):
        out.append(f"{ep[:24]:<24} {m[:32]:<32} {n:>9,} {per_key[(ep, m)]:>10}")
    if result.rejected:
        out.append("")
        out.append("rejected: " + ", ".join(f"{r}={n}" for r, n in sorted(result.rejected.items())))
    out.append("")
    if not result.detections:
        out.append("no drift detected")
    else:
        out.append(
            f"{'event':>8} {'endpoint':<18} {'model':<24} {'feature':<16} {'detector':<12} "
            f"{'baseline':>9} {'current':>9} {'since onset':>11}"
        )
        for d in result.detections:
            onset = "-" if d.events_since_onset is None else f"{d.events_since_onset:,}"
            out.append(
                f"{d.event_index:>8} {d.endpoint[:18]:<18} {d.model[:24]:<24} "
                f"{d.feature[:16]:<16} {d.detector:<12} {d.baseline:>9.3f} {d.current:>9.3f} "
                f"{onset:>11}"
            )
        out.append("")
        out.append(
            "since onset: the key's values of that feature since the change began, as the "
            "detector estimates it"
        )
    return "\n".join(out)


def write_report(result: ReplayResult, path: str) -> None:
    Path(path).write_text(json.dumps(result.report(), indent=1) + "\n")
