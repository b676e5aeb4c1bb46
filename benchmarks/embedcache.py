"""Embedding cache for the quality benchmarks: MiniLM vectors of shared-data answers, on disk.

The embedding benchmarks (``detection.py --embeddings``, ``partial_shift.py``) need the
MiniLM embedding of every answer they stream; encoding them takes minutes, so they are
computed once with driftmon's own :func:`driftmon.embedding.load_embedder` (the default
``embeddings`` settings: the packaged all-MiniLM-L6-v2, ``max_seq_length`` 256,
L2-normalised, the same clipping as the daemon) and kept OUTSIDE the repository: the
shared data is third-party (CC BY-NC 4.0), so neither it nor vectors derived from it may
be committed. Default location ``~/.cache/driftmon-bench/``; override with ``--cache-dir``
or ``DRIFTMON_BENCH_CACHE``.

Layout: ``<cache>/<model tag>/<source>.npy`` (float32, one row per text) with
``<source>.json`` (the row keys). A row's key is the sha256 of the model tag (model name
and max_seq_length) and the text, so a changed answer or model is never served a stale
vector, and identical texts in several sources are embedded once.

Encoding uses ONE torch thread (``torch.set_num_threads(1)``, via ``load_embedder(...,
threads=1)`` and ``OMP_NUM_THREADS=1``): this 2-core machine is shared with throughput
benchmarks, which need the other core. Progress goes to stderr. About 15–35 answers/s, so
warming everything (~19 000 texts) takes 10–20 minutes; run it niced:

    nice -n 10 python benchmarks/embedcache.py            # warm every benchmark's texts
    nice -n 10 python benchmarks/embedcache.py --only detection
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from driftmon.settings import Settings

Float32Array = npt.NDArray[np.float32]

CACHE_ENV = "DRIFTMON_BENCH_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "driftmon-bench"
SAVE_EVERY = 256  # texts encoded between saves, so an interrupted warm-up keeps its work


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE


def _slug(source: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in source.replace("/", "__"))


class EmbeddingCache:
    """Vectors of texts by (model, text) hash; missing ones are encoded and saved.

    ``embed(source, texts)`` returns one row per text. Rows found under any source are
    reused; new ones are stored under ``source``.
    """

    def __init__(self, cache_dir: Path | None = None, settings: Settings | None = None) -> None:
        self.settings = (settings or Settings()).embeddings
        self.model_tag = f"{Path(self.settings.model).name}@{self.settings.max_seq_length}"
        self.root = (cache_dir or default_cache_dir()).expanduser() / _slug(self.model_tag)
        self._repo_guard()
        self._rows: dict[str, tuple[str, int]] = {}  # key -> (source slug, row)
        self._arrays: dict[str, Float32Array] = {}
        self._keys: dict[str, list[str]] = {}
        self._embedder: Any = None
        self.encoded = 0
        if self.root.is_dir():
            for index in sorted(self.root.glob("*.json")):
                slug = index.stem
                npy = index.with_suffix(".npy")
                if not npy.is_file():
                    continue
                keys = json.loads(index.read_text())["keys"]
                arr = np.load(npy).astype(np.float32, copy=False)
                if arr.shape[0] != len(keys):  # torn write: ignore, it will be redone
                    continue
                self._arrays[slug] = arr
                self._keys[slug] = keys
                for row, key in enumerate(keys):
                    self._rows.setdefault(key, (slug, row))

    def _repo_guard(self) -> None:
        repo = Path(__file__).resolve().parents[1]
        root = self.root.resolve()
        if root == repo or repo in root.parents:
            sys.exit(f"embedding cache {root} is inside the repository: third-party data")

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_tag}\x00{text}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self._rows)

    def missing(self, texts: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for t in texts:
            k = self.key(t)
            if k not in self._rows and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def _load_embedder(self) -> Any:
        if self._embedder is None:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            from driftmon.embedding import load_embedder

            self._embedder = load_embedder(self.settings, threads=1)
        return self._embedder

    def _save(self, slug: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        npy, index = self.root / f"{slug}.npy", self.root / f"{slug}.json"
        tmp_npy, tmp_index = npy.with_suffix(".npy.tmp"), index.with_suffix(".json.tmp")
        with open(tmp_npy, "wb") as fh:
            np.save(fh, self._arrays[slug])
        tmp_index.write_text(json.dumps({"model": self.model_tag, "keys": self._keys[slug]}))
        os.replace(tmp_npy, npy)
        os.replace(tmp_index, index)

    def embed(self, source: str, texts: Sequence[str]) -> Float32Array:
        """One L2-normalised float32 row per text (encoding and saving what is missing)."""
        todo = self.missing(texts)
        if todo:
            self._encode(_slug(source), todo)
        rows = [self._rows[self.key(t)] for t in texts]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._arrays[slug][row] for slug, row in rows])

    def _encode(self, slug: str, todo: list[str]) -> None:
        embedder = self._load_embedder()
        # Long texts first, so the rate shown early is the slow one, not an optimistic one.
        todo = sorted(todo, key=len, reverse=True)
        start = time.perf_counter()
        step = 4 * self.settings.batch_size
        unsaved = 0
        for i in range(0, len(todo), step):
            chunk = todo[i : i + step]
            vectors = embedder.encode(chunk)
            keys = [self.key(t) for t in chunk]
            base = self._arrays.get(slug)
            first = 0 if base is None else base.shape[0]
            self._arrays[slug] = vectors if base is None else np.concatenate([base, vectors])
            self._keys.setdefault(slug, []).extend(keys)
            for j, k in enumerate(keys):
                self._rows[k] = (slug, first + j)
            self.encoded += len(chunk)
            unsaved += len(chunk)
            done = i + len(chunk)
            if unsaved >= SAVE_EVERY or done == len(todo):
                self._save(slug)
                unsaved = 0
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(
                f"embedcache {slug}: {done}/{len(todo)} encoded, {rate:.1f} texts/s",
                file=sys.stderr,
                flush=True,
            )


def add_cache_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"embedding cache (default ${CACHE_ENV} or {DEFAULT_CACHE}); never inside the repo",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cache_argument(ap)
    ap.add_argument(
        "--only", choices=("detection", "partial_shift"), default=None, help="one benchmark"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import detection
    import partial_shift

    cache = EmbeddingCache(args.cache_dir)
    wanted: list[tuple[str, list[str]]] = []
    if args.only in (None, "detection"):
        wanted += detection.embedding_sources()
    if args.only in (None, "partial_shift"):
        wanted += partial_shift.embedding_sources()
    total = sum(len(cache.missing(texts)) for _, texts in wanted)
    print(f"embedcache: {len(cache)} cached, {total} to encode in {cache.root}", file=sys.stderr)
    start = time.perf_counter()
    for source, texts in wanted:
        cache.embed(source, texts)
    print(
        json.dumps(
            {
                "cache_dir": str(cache.root),
                "model": cache.model_tag,
                "cached_texts": len(cache),
                "encoded_now": cache.encoded,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
