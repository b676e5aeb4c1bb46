"""False alarms of the embedding detectors on real no-change streams, at a countable budget.

For each AlpacaEval model in ../shared/data (read in place) a stream of ``--events``
answers to prompts drawn at random with replacement, nothing changing. The stream feeds
the embedding detectors exactly as ``Monitor.update_embedding`` wires them: the
:class:`~driftmon.core.embeddings.EmbeddingStream` (reference fit on 200 embeddings,
calibrated on the next 200 held out, then the ``mewma`` chart) and the Mahalanobis
distance, as its normal score against the held-out distances (``EmbeddingStep.scores``),
into a calibrated ``embedding_distance``
:class:`~driftmon.core.detectors.FeatureStream` (Page-Hinkley + ADWIN); an alarm of either
re-learns both. Each detector gets ``--arl`` embedded events per false alarm (the
default budget gives each about 3·10⁷, far too many to count, so the calibration is
checked at 10⁴–10⁵, where alarms can be counted). Prints JSON: events per false alarm
per detector and its ratio to the target (≥ 1: quieter than budgeted).

    nice -n 10 python benchmarks/embedding_calibration.py [--arl 10000] [--events 20000] [--seeds 1]

Vectors come from ``benchmarks/embedcache.py``'s cache outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from detection import DATA, PAIRS, load_outputs
from embedcache import EmbeddingCache, add_cache_argument

from driftmon.core.detectors import DetectorConfig, FeatureStream
from driftmon.core.embeddings import EmbeddingStream

MODELS = sorted({m for a, b, _ in PAIRS for m in (a, b)})


def null_stream(
    vectors: np.ndarray, events: int, seed: int, arl: float, config: DetectorConfig
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(vectors), size=events)
    emb = EmbeddingStream(arl)
    dist = FeatureStream("embedding_distance", "continuous", arl, config)
    alarms = {"mewma": 0, "embedding_distance/page_hinkley": 0, "embedding_distance/adwin": 0}
    watched = {"mewma": 0, "embedding_distance": 0}
    calibration_seconds = []
    for i in draws:
        had_mewma = emb.mewma is not None
        start = time.perf_counter()
        step = emb.update(vectors[i])
        if not had_mewma and emb.mewma is not None:  # this update set the threshold
            calibration_seconds.append(time.perf_counter() - start)
        watched["mewma"] += had_mewma
        if step.drift:
            alarms["mewma"] += 1
            dist.relearn()
        else:
            for score in step.scores:
                watched["embedding_distance"] += not dist.learning
                alarm = dist.update(score)
                if alarm is not None:
                    alarms[f"embedding_distance/{alarm.detector}"] += 1
                    emb.relearn()
                    break
    return {"watched": watched, "alarms": alarms, "calibration_seconds": calibration_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arl", type=float, default=1e4, help="embedded events per false alarm")
    ap.add_argument("--events", type=int, default=20_000, help="embedded events per stream")
    ap.add_argument("--seeds", type=int, default=1, help="streams per model")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--data", type=Path, default=DATA)
    add_cache_argument(ap)
    args = ap.parse_args()
    cache = EmbeddingCache(args.cache_dir)
    config = DetectorConfig()
    rows = []
    start = time.perf_counter()
    for model in args.models:
        outputs = load_outputs(model, args.data)
        vectors = cache.embed(f"alpaca_eval/{model}", list(outputs.values()))
        for seed in range(args.seeds):
            row = {"model": model, "seed": seed}
            row.update(null_stream(vectors, args.events, seed, args.arl, config))
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    per_detector: dict[str, Any] = {}
    for det, watched_as in (
        ("mewma", "mewma"),
        ("embedding_distance/page_hinkley", "embedding_distance"),
        ("embedding_distance/adwin", "embedding_distance"),
    ):
        watched = sum(r["watched"][watched_as] for r in rows)
        alarms = sum(r["alarms"][det] for r in rows)
        per = watched / alarms if alarms else None
        per_detector[det] = {
            "watched_events": watched,
            "false_alarms": alarms,
            "expected_at_budget": round(watched / args.arl, 1),
            "events_per_false_alarm": None if per is None else round(per),
            "ratio_to_budget": None if per is None else round(per / args.arl, 2),
        }
    seconds = sorted(t for r in rows for t in r.pop("calibration_seconds"))
    summary = {
        "target_events_per_false_alarm": args.arl,
        "mewma_calibrations": len(seconds),
        "mewma_calibration_seconds_median": round(seconds[len(seconds) // 2], 2)
        if seconds
        else None,
        "streams": len(rows),
        "events_per_stream": args.events,
        "seconds": round(time.perf_counter() - start, 1),
        "detectors": per_detector,
    }
    print(json.dumps({"summary": summary, "streams": rows}, indent=1))


if __name__ == "__main__":
    main()
