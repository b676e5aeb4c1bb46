"""Small 0/1 rates that rise by a factor: how often and how soon a feature's detectors fire.

A canary of a model that bolds more (gpt-4-0314 → 0613 at a 20 % share: markdown_bold
1 % → 2.6 %) or a refusal rate going from 2 % to 4 % moves a small 0/1 rate by less than
Page-Hinkley's k = 0.25 sd, and the rare-rate CUSUM is tuned to new behaviours (20 %).
Each run feeds one ``FeatureStream`` (the pipeline's default budget for a key of
``--features`` features) ``--before`` values at p₀, then ``--after`` at p₁, and records the
first alarm. Also printed, per p₀: the calibrated threshold and the expected delay of a
likelihood-ratio CUSUM tuned to a multiple of the reference's rate (the tail CUSUMs'
design and budget share, :func:`driftmon.core.calibration.tail_threshold`, applied to the
0/1 rate; not part of driftmon) on the reference the stream holds at the change (its size
from the stream's merges, its ones the expected p₀·n), and the delay of a CUSUM that
knew p₀ and p₁ (log of the budget over the KL divergence per value). Prints JSON:

    python benchmarks/rate_rises.py [--seeds 30]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from typing import Any

from driftmon.core import calibration
from driftmon.core.detectors import STATE_FIELDS, DetectorConfig, FeatureStream
from driftmon.settings import Settings

RISES = ((0.005, 0.015), (0.01, 0.026), (0.02, 0.04), (0.05, 0.10))


def run(seed: int, p0: float, p1: float, target: float, args: argparse.Namespace) -> Any:
    """(detector, values after the change) of the first alarm; ("false", i) before it."""
    stream = FeatureStream("refusal", "binary", target, DetectorConfig())
    rng = random.Random(seed)
    for i in range(args.before):
        if stream.update(1.0 if rng.random() < p0 else 0.0) is not None:
            return "false_alarm", i
    for i in range(args.after):
        alarm = stream.update(1.0 if rng.random() < p1 else 0.0)
        if alarm is not None:
            return alarm.detector, i + 1
    return None, None


def reference(p0: float, target: float, before: int) -> tuple[int, int]:
    """(values, ones) of the reference a stream holds after ``before`` values: its size as
    the stream's merges make it, the ones as expected at p₀ (not one seed's count)."""
    stream = FeatureStream("refusal", "binary", target, DetectorConfig())
    for i in range(before):
        stream.update(1.0 if i % 2 else 0.0)  # a rate not rare: the size is all that is read
    fields = dict(zip(STATE_FIELDS, stream.__reduce__()[1], strict=True))  # compiled too
    n_ref = int(fields["ref_n"])
    return n_ref, round(p0 * n_ref)


def ratio_cusum(
    p1: float, n_ref: int, successes: int, target: float, ratio: float
) -> dict[str, Any]:
    """Threshold and expected delay at p₁ of a CUSUM of ``ratio`` × the counted rate."""
    saved = calibration.TAIL_RATIO, calibration.TAIL_RATE_MIN
    calibration.TAIL_RATIO, calibration.TAIL_RATE_MIN = ratio, 0.0
    calibration._tail_threshold_exact.cache_clear()  # its cache is not keyed by the ratio
    try:
        h = calibration.tail_threshold(successes, n_ref, target)
        up, down = calibration.tail_steps(successes, n_ref)
    finally:
        calibration.TAIL_RATIO, calibration.TAIL_RATE_MIN = saved
        calibration._tail_threshold_exact.cache_clear()
    drift = p1 * up - (1.0 - p1) * down
    return {
        "ratio": ratio,
        "threshold": round(h, 1),
        "expected_delay": round(h / drift) if drift > 0 and h < math.inf else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--before", type=int, default=3000, help="values at p0 first")
    ap.add_argument("--after", type=int, default=20000, help="values watched at p1")
    ap.add_argument("--features", type=int, default=14, help="features per key (the budget)")
    args = ap.parse_args()
    settings = Settings()
    budget = settings.detectors.events_per_false_alarm
    target = budget * args.features * 2  # each detector's share, as the monitor gives it
    rows = []
    for p0, p1 in RISES:
        n_ref, ones = reference(p0, target, args.before)
        runs = [run(seed, p0, p1, target, args) for seed in range(args.seeds)]
        delays = [d for det, d in runs if det not in (None, "false_alarm")]
        kl = p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))
        rows.append(
            {
                "p0": p0,
                "p1": p1,
                "shift_in_sd": round((p1 - p0) / math.sqrt(p0 * (1 - p0)), 3),
                "detected_runs": len(delays),
                "runs": len(runs),
                "false_alarms_before": sum(det == "false_alarm" for det, _ in runs),
                "median_delay": statistics.median(delays) if delays else None,
                "by_detector": {
                    det: sum(d == det for d, _ in runs)
                    for det in sorted({str(d) for d, _ in runs if d is not None})
                },
                "knew_both_rates_delay": round(math.log(budget) / kl),
                "reference": {"values": n_ref, "ones": ones},
                "ratio_cusum": [ratio_cusum(p1, n_ref, ones, target, r) for r in (2.0, 3.0)]
                if n_ref
                else None,
            }
        )
    print(
        json.dumps(
            {
                "budget_events_per_false_alarm": budget,
                "detector_target": target,
                "before": args.before,
                "after": args.after,
                "rises": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
