"""Rollouts, canaries and new behaviours on real answers: how long until driftmon fires.

Real AlpacaEval answers from ../shared/data (read in place), prompts drawn at random with
replacement, one endpoint and one model label, every event through the real
:class:`~driftmon.core.pipeline.Pipeline` at the default false-alarm budget (embeddings
off), as in ``benchmarks/detection.py``. After ``--before`` events of model A:

* ``ramp``: a rollout; each answer is model B's with a probability rising linearly from 0
  to 1 over ``--ramp`` events, then B's only;
* ``canary``: a permanent canary; each answer is B's with probability ``--canary``;
* ``fences``: a new behaviour; before, only answers of the base model without a code fence
  (as the code_fence feature sees them); after, each answer is one of its fenced answers
  with probability ``--fence-rate``, else an unfenced one.

A stream runs ``--after`` events after the start of the change; one that has not fired by
then is a miss (medians count a miss as an infinite delay: ``null`` when half the runs
miss). Delays are events after the start; for ``fences`` also fenced answers after the
start, for the first detection of any feature and for the first of ``code_fence``.
Alarms before the start are counted (the budget expects none). Prints JSON:

    python benchmarks/rollouts.py [--seeds 3] [--scenarios ramp canary fences]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from driftmon.config import pipeline_config
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_outputs" / "alpaca_eval"
# The length and format pairs of benchmarks/detection.py (every run of each detected there).
PAIRS: tuple[tuple[str, str], ...] = (
    ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613"),
    ("text_davinci_003", "gpt-3.5-turbo-0301"),
    ("gpt4_0314", "gpt4_0613"),
    ("claude-2.1", "claude-3-opus-20240229"),
    ("llama-2-70b-chat-hf", "Meta-Llama-3-70B-Instruct"),
    ("gpt-3.5-turbo-0613", "gemini-pro"),
)
FENCE_BASES = ("gpt4_0314", "claude-2.1", "gpt-3.5-turbo-0613", "Meta-Llama-3-70B-Instruct")
SCENARIOS = ("ramp", "canary", "fences")
# Issue 16's targets.
TARGET_RAMP_MEDIAN = 500
TARGET_CANARY_MEDIAN = 1000
TARGET_FENCES = 4


def load_outputs(model: str, data_dir: Path) -> dict[int, str]:
    outputs: dict[int, str] = {}
    with open(data_dir / f"{model}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if isinstance(row.get("output"), str):
                outputs[int(row["instruction_id"])] = row["output"]
    return outputs


def _line(text: str, index: int) -> str:
    return json.dumps(
        {"endpoint": "assistant", "model": "production", "output": text, "id": str(index)}
    )


def _median(delays: list[int | None]) -> float | None:
    """Median with a miss counted as an infinite delay."""
    if not delays:
        return None
    m = statistics.median(math.inf if d is None else d for d in delays)
    return None if math.isinf(m) else m


def share_of_b(scenario: str, i: int, args: argparse.Namespace) -> float:
    """The probability that event ``i`` after the start is model B's."""
    if scenario == "ramp":
        return min(1.0, (i + 1) / args.ramp)
    return float(args.canary)


def run_mixture(
    scenario: str,
    a: dict[int, str],
    b: dict[int, str],
    seed: int,
    settings: Settings,
    args: argparse.Namespace,
) -> dict[str, Any]:
    ids = sorted(set(a) & set(b))
    prompts, mix = random.Random(seed), random.Random(10_000 + seed)
    pipeline = Pipeline(pipeline_config(settings))
    before: list[str] = []
    first: tuple[int, str] | None = None
    b_events = 0
    for index in range(args.before + args.after):
        pid = prompts.choice(ids)
        text = a[pid]
        if index >= args.before and mix.random() < share_of_b(scenario, index - args.before, args):
            text = b[pid]
            b_events += 1
        for d in pipeline.process(_line(text, index), index).detections:
            if index < args.before:
                before.append(f"{d.feature}/{d.detector}@{index}")
            elif first is None:
                first = (index - args.before, f"{d.feature}/{d.detector}")
        if first is not None:
            break
    return {
        "seed": seed,
        "delay": None if first is None else first[0],
        "first_feature": None if first is None else first[1],
        "b_answers_by_then": b_events,
        "alarms_before_start": before,
    }


def is_fenced(outputs: dict[int, str]) -> dict[int, bool]:
    """Per answer, whether driftmon's code_fence feature is 1 (a throwaway pipeline)."""
    pipeline = Pipeline(pipeline_config(Settings()))
    return {
        pid: pipeline.process(_line(text, i), i).features.get("code_fence", 0.0) >= 0.5
        for i, (pid, text) in enumerate(sorted(outputs.items()))
    }


def run_fences(
    outputs: dict[int, str], fenced: dict[int, bool], seed: int, settings: Settings, args: Any
) -> dict[str, Any]:
    plain = sorted(p for p, f in fenced.items() if not f)
    code = sorted(p for p, f in fenced.items() if f)
    rng = random.Random(seed)
    pipeline = Pipeline(pipeline_config(settings))
    before: list[str] = []
    first_any: tuple[int, int, str] | None = None
    first_fence: tuple[int, int] | None = None
    n_fenced = 0
    for index in range(args.before + args.after):
        after = index >= args.before
        new = after and rng.random() < args.fence_rate
        n_fenced += new
        text = outputs[rng.choice(code if new else plain)]
        for d in pipeline.process(_line(text, index), index).detections:
            if not after:
                before.append(f"{d.feature}/{d.detector}@{index}")
                continue
            at = (index - args.before + 1, n_fenced)
            if first_any is None:
                first_any = (*at, f"{d.feature}/{d.detector}")
            if first_fence is None and d.feature == "code_fence":
                first_fence = at
        if first_fence is not None:
            break
    return {
        "seed": seed,
        "events_to_any": None if first_any is None else first_any[0],
        "fenced_to_any": None if first_any is None else first_any[1],
        "first_feature": None if first_any is None else first_any[2],
        "events_to_code_fence": None if first_fence is None else first_fence[0],
        "fenced_to_code_fence": None if first_fence is None else first_fence[1],
        "alarms_before_start": before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--before", type=int, default=3000, help="events of A before the start")
    ap.add_argument("--after", type=int, default=4000, help="events watched after the start")
    ap.add_argument("--ramp", type=int, default=2000, help="events of the 0 → 100 %% ramp")
    ap.add_argument("--canary", type=float, default=0.2, help="the canary's share")
    ap.add_argument("--fence-rate", type=float, default=0.35)
    ap.add_argument("--fence-before", type=int, default=600, help="unfenced events first")
    ap.add_argument("--budget", type=float, default=None, help="events per false alarm per key")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"shared data not found at {args.data}")
    settings = Settings(
        **({"detectors": {"events_per_false_alarm": args.budget}} if args.budget else {})
    )
    out: dict[str, Any] = {
        "budget_events_per_false_alarm": settings.detectors.events_per_false_alarm
    }
    for scenario in args.scenarios:
        if scenario == "fences":
            fence_args = argparse.Namespace(**{**vars(args), "before": args.fence_before})
            rows = []
            for base in FENCE_BASES:
                outputs = load_outputs(base, args.data)
                fenced = is_fenced(outputs)
                runs = [
                    run_fences(outputs, fenced, s, settings, fence_args) for s in range(args.seeds)
                ]
                row = {
                    "base": base,
                    "fenced_answers_available": sum(fenced.values()),
                    "median_fenced_to_code_fence": _median(
                        [r["fenced_to_code_fence"] for r in runs]
                    ),
                    "median_events_to_code_fence": _median(
                        [r["events_to_code_fence"] for r in runs]
                    ),
                    "median_fenced_to_any": _median([r["fenced_to_any"] for r in runs]),
                    "runs": runs,
                }
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), file=sys.stderr)
                rows.append(row)
            counts = [r["fenced_to_code_fence"] for row in rows for r in row["runs"]]
            out["fences"] = {
                "before": args.fence_before,
                "rate": args.fence_rate,
                "median_fenced_to_code_fence": _median(counts),
                "max_fenced_to_code_fence": None if None in counts else max(counts),
                "runs_within_target": sum(c is not None and c <= TARGET_FENCES for c in counts),
                "runs": len(counts),
                "alarms_before_start": sum(
                    len(r["alarms_before_start"]) for row in rows for r in row["runs"]
                ),
                "bases": rows,
            }
            continue
        rows = []
        for a_name, b_name in PAIRS:
            a, b = load_outputs(a_name, args.data), load_outputs(b_name, args.data)
            runs = [run_mixture(scenario, a, b, s, settings, args) for s in range(args.seeds)]
            row = {
                "pair": f"{a_name} -> {b_name}",
                "detected_runs": sum(r["delay"] is not None for r in runs),
                "runs": len(runs),
                "median_delay": _median([r["delay"] for r in runs]),
                "runs_detail": runs,
            }
            print(
                json.dumps(
                    {
                        scenario: row["pair"],
                        **{k: v for k, v in row.items() if k not in ("pair", "runs_detail")},
                    }
                ),
                file=sys.stderr,
            )
            rows.append(row)
        delays = [r["delay"] for row in rows for r in row["runs_detail"]]
        out[scenario] = {
            "after": args.after,
            **({"ramp_events": args.ramp} if scenario == "ramp" else {"share": args.canary}),
            "median_delay": _median(delays),
            "pairs_all_runs_detected": sum(row["detected_runs"] == row["runs"] for row in rows),
            "pairs": len(rows),
            "detected_runs": sum(d is not None for d in delays),
            "runs": len(delays),
            "alarms_before_start": sum(
                len(r["alarms_before_start"]) for row in rows for r in row["runs_detail"]
            ),
            "by_pair": rows,
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
