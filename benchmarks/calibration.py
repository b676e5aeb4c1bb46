"""Null-stream check of the false-alarm calibration. Prints JSON.

For each null distribution, many independent keys each see a stream with no change; the
reference is learned from each key's own warm-up exactly as in production, and after an
alarm it is learned again. The measured events per false alarm per key (all events of all
keys / all alarms) is compared with the configured budget.

    python benchmarks/calibration.py --budget 20000 --keys 40 --events 50000
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable

from driftmon.core.detectors import DetectorConfig
from driftmon.core.monitor import Monitor, MonitorConfig

Sampler = Callable[[random.Random], float]

NULLS: dict[str, tuple[str, Sampler]] = {
    # feature name decides continuous vs 0/1 handling
    "gaussian": ("output_chars", lambda r: r.gauss(6.5, 0.8)),
    "lognormal_raw": ("sentence_words", lambda r: math.exp(r.gauss(2.8, 1.0))),
    "log1p_lognormal_chars": ("output_chars", lambda r: math.log1p(math.exp(r.gauss(7.0, 0.9)))),
    "discrete_counts": ("list_items", lambda r: math.log1p(min(int(r.expovariate(0.4)), 40))),
    "thumbs_feedback": ("feedback", lambda r: 1.0 if r.random() < 0.8 else -1.0),
    "rate_p0.30": ("markdown_start", lambda r: 1.0 if r.random() < 0.30 else 0.0),
    "rate_p0.05": ("code_fence", lambda r: 1.0 if r.random() < 0.05 else 0.0),
    "rate_p0.005": ("refusal", lambda r: 1.0 if r.random() < 0.005 else 0.0),
    "rate_p0.0005": ("empty_output", lambda r: 1.0 if r.random() < 0.0005 else 0.0),
}


def run(
    name: str, budget: float, n_keys: int, n_events: int, detectors: str, seed: int
) -> dict[str, object]:
    feature, sampler = NULLS[name]
    cfg = MonitorConfig(
        events_per_false_alarm=budget,
        max_keys=n_keys + 1,
        detector=DetectorConfig(
            page_hinkley=detectors in ("both", "page_hinkley"),
            adwin=detectors in ("both", "adwin"),
        ),
    )
    monitor = Monitor(cfg, feature_count=lambda _e: 1)
    rng = random.Random(seed)
    alarms = {"page_hinkley": 0, "adwin": 0}
    t0 = time.perf_counter()
    for key in range(n_keys):
        ep = f"k{key}"
        for _ in range(n_events):
            for det in monitor.update(ep, "m", {feature: sampler(rng)}, None):
                alarms[det.detector] += 1
    total = n_keys * n_events
    n_alarms = sum(alarms.values())
    measured = total / n_alarms if n_alarms else math.inf
    return {
        "null": name,
        "feature": feature,
        "detectors": detectors,
        "budget_events_per_false_alarm": budget,
        "simulated_events": total,
        "keys": n_keys,
        "alarms": alarms,
        "measured_events_per_false_alarm": measured,
        "ratio_to_budget": measured / budget,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=20_000)
    ap.add_argument("--keys", type=int, default=40)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--detectors", choices=["both", "page_hinkley", "adwin"], default="both")
    ap.add_argument("--null", action="append", choices=sorted(NULLS), default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for name in args.null or list(NULLS):
        row = run(name, args.budget, args.keys, args.events, args.detectors, args.seed)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    print(json.dumps({"calibration": rows}, indent=1))


if __name__ == "__main__":
    main()
