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

``--bound`` prints instead, per pair, an estimate of how soon *any* detector could fire at
the same budget: a CUSUM of the true log-likelihood ratio of the stream after the start
against model A's (it knows model B and the share) fires after about log(budget) nats of
evidence (Lorden's bound), so its delay is log(budget) / KL for the canary and the first t
whose summed KL reaches log(budget) for the ramp. KL per event is estimated per feature
from the answers' histograms (bins at A's quantiles, or A's distinct values, +½ per bin)
and summed over features as if they were independent: an estimate, not a proof (features
that move together carry less evidence than the sum; shapes the histograms blur, more).
For ``fences`` it prints the code_fence stream's calibration after ``--fence-before``
unfenced answers, the longest span of ``TARGET_FENCES`` fenced answers its rare-rate
CUSUM fires on (so the share of runs within the target it can reach at ``--fence-rate``),
and the same for the best any detector could do at that CUSUM's budget and at the
feature's whole budget (see :func:`fence_bound`).
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

import numpy as np

from driftmon.config import pipeline_config
from driftmon.core.detectors import STATE_FIELDS
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


def answer_features(outputs: dict[int, str]) -> dict[int, dict[str, float]]:
    """Per answer, the feature values the detectors see (a throwaway pipeline)."""
    pipeline = Pipeline(pipeline_config(Settings()))
    return {
        pid: pipeline.process(_line(text, i), i).features
        for i, (pid, text) in enumerate(sorted(outputs.items()))
    }


def mixture_kl(xa: list[float], xb: list[float], share: float, bins: int = 12) -> float:
    """KL(mixture || A) per event of one feature, ``share`` of the answers from B."""
    a, b = np.asarray(xa), np.asarray(xb)
    values = np.unique(a)
    if len(values) <= bins:
        cuts = (values[:-1] + values[1:]) / 2.0
    else:
        cuts = np.unique(np.quantile(a, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    qa = np.bincount(np.searchsorted(cuts, a), minlength=len(cuts) + 1) + 0.5
    qb = np.bincount(np.searchsorted(cuts, b), minlength=len(cuts) + 1) + 0.5
    qa, qb = qa / qa.sum(), qb / qb.sum()
    qm = (1.0 - share) * qa + share * qb
    return float(np.sum(qm * np.log(qm / qa)))


def bound(a_name: str, b_name: str, args: argparse.Namespace, budget: float) -> dict[str, Any]:
    fa = answer_features(load_outputs(a_name, args.data))
    fb = answer_features(load_outputs(b_name, args.data))
    ids = sorted(set(fa) & set(fb))
    names = sorted({n for i in ids for n in fa[i]} | {n for i in ids for n in fb[i]})
    cols = {n: ([fa[i].get(n, 0.0) for i in ids], [fb[i].get(n, 0.0) for i in ids]) for n in names}

    def kl(share: float) -> float:
        return sum(mixture_kl(xa, xb, share) for xa, xb in cols.values())

    nats = math.log(budget)
    shares = np.linspace(0.0, 1.0, 41)
    kls = np.array([kl(float(e)) for e in shares])
    total, ramp_delay = 0.0, None
    for t in range(1, args.after + 1):
        total += float(np.interp(min(1.0, t / args.ramp), shares, kls))
        if total >= nats:
            ramp_delay = t
            break
    canary_kl = kl(args.canary)
    by_feature = {n: mixture_kl(*cols[n], args.canary) for n in names}
    return {
        "pair": f"{a_name} -> {b_name}",
        "kl_full_switch": round(float(kls[-1]), 4),
        "kl_canary": round(canary_kl, 5),
        "canary_delay_estimate": round(nats / canary_kl) if canary_kl > 0 else None,
        "ramp_delay_estimate": ramp_delay,
        "canary_kl_by_feature": {
            n: round(v, 5) for n, v in sorted(by_feature.items(), key=lambda kv: -kv[1])[:5]
        },
    }


# -- new behaviours: the most any detector can do at the budget ----------------------------
#
# A reference of 0 fenced answers in n does not say the rate is 0: the detectors are
# calibrated over the Jeffreys posterior Beta(½, n + ½) of the rate, which allows ~1 %
# after 0 in 600. Catching a new behaviour at its k-th occurrence means alarming on k
# occurrences within some span; under the null the chance of that, averaged over the
# posterior, grows with the span. Alarming on the shortest spans first is the best use of a
# budget for "within k" (the likelihood ratio of a span, the new rate against the
# posterior, falls with its length), so the longest span W whose null alarm rate fits the
# budget bounds the share of runs any detector can catch within k: P(k occurrences within
# W events at the new rate). Approximately: the alarm rate per event is taken as 1/ARL.


def _posterior_mean(fn: Any, successes: int, n_ref: int) -> float:
    """E[fn(p)] over the Jeffreys posterior Beta(s + ½, n − s + ½) (numerical)."""
    a, b = successes + 0.5, n_ref - successes + 0.5
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    p = np.geomspace(1e-12, 0.5, 20_001)
    density = np.exp((a - 1.0) * np.log(p) + (b - 1.0) * np.log1p(-p) - log_norm)
    y = fn(p) * density
    return float(np.sum((y[1:] + y[:-1]) * np.diff(p)) / 2.0)


def _window_alarm_rate(p: Any, window: int, k: int) -> Any:
    """Per event: the chance it is an occurrence with ≥ k − 1 more in the window − 1 before."""
    m = window - 1
    below = sum(math.comb(m, j) * p**j * (1.0 - p) ** (m - j) for j in range(k - 1))
    return p * (1.0 - below)


def _within(window: int, k: int, rate: float) -> float:
    """P(the k-th occurrence comes within ``window`` events of the first, at ``rate``)."""
    return sum(
        math.comb(j + k - 2, k - 2) * rate ** (k - 1) * (1.0 - rate) ** j
        for j in range(window - k + 1)
    )


def fence_bound(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """For the fences scenario: the code_fence stream's reference and calibration as the
    pipeline builds them after ``--fence-before`` unfenced answers, the span its rare-rate
    CUSUM allows for ``TARGET_FENCES`` occurrences, and the longest span any detector could
    allow at the same budget (that CUSUM's, and the feature's whole budget)."""
    from driftmon.core.calibration import RARE_SHARE, adwin_binary_rate_ratio

    k, rate, n = TARGET_FENCES, args.fence_rate, args.fence_before
    pipeline = Pipeline(pipeline_config(settings))
    for i in range(n):
        pipeline.process(_line("A plain answer.", i), i)
    (state,) = pipeline.monitor.key_states()
    stream = state.streams["code_fence"]
    fields = dict(zip(STATE_FIELDS, stream.__reduce__()[1], strict=True))  # compiled too
    ref_n, ref_ones = int(fields["ref_n"]), round(fields["_ref_sum"])
    up, down, h = fields["_rb_up"], fields["_rb_down"], fields["_rb_threshold"]
    cusum_span = k + math.floor((k * up - h) / down) if k * up >= h else None
    # The rare CUSUM's budget as calibration gives it: RARE_SHARE of Page-Hinkley's plus
    # the part of ADWIN's that ADWIN leaves unused at this rate (averaged over the posterior).
    spent = _posterior_mean(adwin_binary_rate_ratio, ref_ones, ref_n)
    budgets = {
        "rare_rate_cusum": RARE_SHARE * (2.0 - spent) / stream.target_arl,
        "whole_feature": 2.0 / stream.target_arl,
    }
    ceilings = {}
    for name, budget in budgets.items():
        window = k
        while (
            _posterior_mean(lambda p, w=window + 1: _window_alarm_rate(p, w, k), ref_ones, ref_n)
            <= budget
        ):
            window += 1
        ceilings[name] = {
            "events_per_false_alarm": round(1.0 / budget),
            "longest_span": window,
            "share_within_target": round(_within(window, k, rate), 3),
        }
    return {
        "reference_events": ref_n,
        "fenced_in_reference": ref_ones,
        "rate_after": rate,
        "target_occurrences": k,
        "rare_cusum": {
            "rise": round(up, 3),
            "fall": round(down, 3),
            "threshold": round(h, 3),
            "longest_span": cusum_span,
            "share_within_target": None
            if cusum_span is None
            else round(_within(cusum_span, k, rate), 3),
        },
        "any_detector": ceilings,
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
    ap.add_argument("--bound", action="store_true", help="estimate the best possible delays")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"shared data not found at {args.data}")
    settings = Settings(
        **({"detectors": {"events_per_false_alarm": args.budget}} if args.budget else {})
    )
    out: dict[str, Any] = {
        "budget_events_per_false_alarm": settings.detectors.events_per_false_alarm
    }
    if args.bound:
        budget = settings.detectors.events_per_false_alarm
        out["bound"] = [bound(a, b, args, budget) for a, b in PAIRS]
        out["fences_bound"] = fence_bound(args, settings)
        print(json.dumps(out, indent=1))
        return
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
