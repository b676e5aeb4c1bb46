"""Embedding throughput: the worker against plain ``SentenceTransformer.encode`` on the
same texts at the same batch size, and replay events/s with embeddings on against off.
Prints JSON. Needs the embeddings extra (``pip install torch==2.13.0`` first).

    python benchmarks/embedding.py [--texts 200] [--repeats 3] [--replay-events 6000]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from answers import DATA, real_answers

from driftmon.demo.synthetic import generate
from driftmon.embedding import EmbeddingWorker, load_embedder
from driftmon.replay import replay
from driftmon.settings import Settings


def worker_vs_encode(texts: list[str], repeats: int) -> dict[str, Any]:
    """The worker (a child process with its own copy of the model) against plain encode in
    this process; one torch thread each, as the daemon runs it, interleaved."""
    settings = Settings().embeddings
    embedder = load_embedder(settings, threads=1)
    model = embedder._model  # the SentenceTransformer inside, for the plain baseline
    worker: EmbeddingWorker[int, int] = EmbeddingWorker.from_settings(
        functools.partial(load_embedder, settings, threads=1),
        settings.model_copy(update={"queue_size": len(texts)}),
    )
    plain, worker_rates = [], []
    try:
        for _ in range(repeats):  # interleaved, so both see the same machine
            t0 = time.perf_counter()
            model.encode(
                texts,
                batch_size=settings.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            plain.append(len(texts) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for i, text in enumerate(texts):
                worker.submit(i, i, text)
            done = 0
            while done < len(texts):
                done += len(worker.drain())
                time.sleep(0.005)
            worker_rates.append(len(texts) / (time.perf_counter() - t0))
    finally:
        worker.close()
    return {
        "texts": len(texts),
        "batch_size": settings.batch_size,
        "plain_encode_per_second": [round(r, 1) for r in plain],
        "worker_per_second": [round(r, 1) for r in worker_rates],
        "worker_to_plain_ratio_median": round(
            statistics.median(worker_rates) / statistics.median(plain), 3
        ),
    }


def replay_on_vs_off(n_events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_text("\n".join(generate(n_events, n_keys=4, seed=2)) + "\n")
        out: dict[str, Any] = {"events": n_events}
        for enabled in (False, True):
            settings = Settings(embeddings={"enabled": enabled})
            t0 = time.perf_counter()
            result = replay([str(path)], settings)
            seconds = time.perf_counter() - t0
            out["on" if enabled else "off"] = {
                "events_per_second": round(n_events / seconds),
                "embedded": result.embedded,
                "seconds": round(seconds, 1),
            }
        out["on_to_off_ratio"] = round(
            out["on"]["events_per_second"] / out["off"]["events_per_second"], 3
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--replay-events", type=int, default=6000)
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"shared data not found at {DATA}")
    report = {
        "benchmark": "embedding_throughput",
        "worker_vs_encode": worker_vs_encode(real_answers(args.texts), args.repeats),
        "replay": replay_on_vs_off(args.replay_events),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
