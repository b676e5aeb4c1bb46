"""Detection quality on real model upgrades (../shared/data/llm_outputs/alpaca_eval).

For each pair (A → B) a stream of 3000 events of model A then 3000 of model B, prompts
drawn at random with replacement (the same way before and after), all under one endpoint
and one model label: a silent upgrade. The two no-change controls are built the same way.
Each pair is run with several seeds. Prints JSON.

    python benchmarks/detection.py [--seeds 5] [--budget 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_outputs" / "alpaca_eval"

PAIRS: list[tuple[str, str, str]] = [
    ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613", "length"),
    ("text_davinci_003", "gpt-3.5-turbo-0301", "length"),
    ("gpt4_0314", "gpt4_0613", "length"),
    ("claude-2.1", "claude-3-opus-20240229", "length"),
    ("llama-2-70b-chat-hf", "Meta-Llama-3-70B-Instruct", "format"),
    ("gpt-3.5-turbo-0613", "gemini-pro", "format"),
    ("claude-2", "claude-2.1", "hard"),
    ("gpt-4-turbo-2024-04-09", "gpt-4o-2024-05-13", "hard"),
    ("gpt4__alias-gpt-4_run2023", "gpt4_0314", "control"),
    ("vicuna-13b-v1.5", "vicuna-13b-v1.5-togetherai", "control"),
]
PER_SIDE = 3000


def load_outputs(model: str, data_dir: Path) -> dict[int, str]:
    outputs: dict[int, str] = {}
    with open(data_dir / f"{model}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if isinstance(row.get("output"), str):
                outputs[int(row["instruction_id"])] = row["output"]
    return outputs


def stream(a: dict[int, str], b: dict[int, str], seed: int) -> list[str]:
    """3000 answers of A then 3000 of B to prompts drawn at random from those both answered."""
    ids = sorted(set(a) & set(b))
    rng = random.Random(seed)
    lines = []
    for i in range(2 * PER_SIDE):
        pid = rng.choice(ids)
        text = a[pid] if i < PER_SIDE else b[pid]
        event = {
            "endpoint": "assistant",
            "model": "production",
            "output": text,
            "id": f"{seed}-{i}",
        }
        lines.append(json.dumps(event))
    return lines


def run_pair(
    a_name: str, b_name: str, kind: str, seeds: int, settings: Settings, data_dir: Path
) -> dict[str, Any]:
    a, b = load_outputs(a_name, data_dir), load_outputs(b_name, data_dir)
    runs = []
    for seed in range(seeds):
        pipeline = Pipeline(settings)
        detections = []
        for index, line in enumerate(stream(a, b, seed)):
            detections.extend(pipeline.process(line, index).detections)
        before = [d for d in detections if d.event_index < PER_SIDE]
        after = [d for d in detections if d.event_index >= PER_SIDE]
        first = min((d.event_index for d in after), default=None)
        runs.append(
            {
                "seed": seed,
                "detected": first is not None,
                "delay": None if first is None else first - PER_SIDE,
                "features_fired": sorted({f"{d.feature}/{d.detector}" for d in after}),
                "first_feature": next(
                    (f"{d.feature}/{d.detector}" for d in after if d.event_index == first), None
                ),
                "alarms_before_switch": [
                    f"{d.feature}/{d.detector}@{d.event_index}" for d in before
                ],
            }
        )
    delays = [r["delay"] for r in runs if r["delay"] is not None]
    return {
        "pair": f"{a_name} -> {b_name}",
        "kind": kind,
        "detected_runs": sum(r["detected"] for r in runs),
        "runs": len(runs),
        "median_delay": statistics.median(delays) if delays else None,
        "alarms_before_switch": sum(len(r["alarms_before_switch"]) for r in runs),
        "details": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=None, help="events per false alarm per key")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"shared data not found at {args.data}")
    overrides: dict[str, Any] = {}
    if args.budget:
        overrides["detectors"] = {"events_per_false_alarm": args.budget}
    settings = Settings(**overrides)
    rows = []
    for a_name, b_name, kind in PAIRS:
        row = run_pair(a_name, b_name, kind, args.seeds, settings, args.data)
        brief = {k: v for k, v in row.items() if k != "details"}
        print(json.dumps(brief), file=sys.stderr, flush=True)
        rows.append(row)
    easy = [r for r in rows if r["kind"] in ("length", "format")]
    easy_delays = [r["median_delay"] for r in easy if r["median_delay"] is not None]
    summary = {
        "budget_events_per_false_alarm": settings.detectors.events_per_false_alarm,
        "easy_pairs_all_detected": all(r["detected_runs"] == r["runs"] for r in easy),
        "easy_pairs_median_delay": statistics.median(easy_delays) if easy_delays else None,
        "hard_pairs_detected": [
            r["pair"] for r in rows if r["kind"] == "hard" and r["detected_runs"]
        ],
        "control_alarms": sum(
            r["alarms_before_switch"] + r["detected_runs"] for r in rows if r["kind"] == "control"
        ),
        "pre_switch_alarms": sum(r["alarms_before_switch"] for r in rows),
    }
    print(json.dumps({"summary": summary, "pairs": rows}, indent=1))


if __name__ == "__main__":
    main()
