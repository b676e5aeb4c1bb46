"""Partial style shifts on real answers: what the embedding detectors see, and how fast.

Each stream is one model's real AlpacaEval answers (../shared/data, read in place) to
prompts drawn at random with replacement, the same way before and after the switch (as
in production: every answer is to a new, random prompt). After ``--before`` events a
fraction ρ of the answers (each one independently, with probability ρ) changes:

* ``preamble``: a canned chatty opener is prepended ("Certainly! I'd be happy to help…");
* ``truncation``: the answer is cut to its first sentence;
* ``refusal``: the answer is replaced by a short refusal ("I'm sorry, but I can't…").

ρ ∈ {0.1, 0.3, 1.0}, several base models and seeds. Every event goes through the real
:class:`~driftmon.core.pipeline.Pipeline` with embeddings on at the default false-alarm
budget, and every event is embedded (sample rate 1.0 unless ``--sample-rate``), so delays
in events and in embedded events coincide; they are reported in embedded events after the
switch. A run that has not fired within ``--after`` events is a miss; medians count a
miss as an infinite delay, so a median is ``null`` when half the runs or more miss.

Besides the production pipeline (core features and embedding detectors together; an
alarm of either embedding detector re-learns both) each stream also feeds stand-alone
detectors with the same per-detector false-alarm budget, so each is measured on its own:

* ``mewma``: driftmon's :class:`~driftmon.core.embeddings.EmbeddingStream` (MEWMA only);
* ``embedding_distance``: the Mahalanobis distance to the same kind of reference (fit on
  the first 200 embeddings, calibrated on the next 200) as its normal score against the
  held-out distances, as the monitor feeds it, into a calibrated
  :class:`~driftmon.core.detectors.FeatureStream` (Page-Hinkley + ADWIN);
* ``cosine``: the classic baseline, 1 − cosine similarity to the reference centroid into
  an identical FeatureStream (benchmark only: it is not a detector driftmon ships).

Pre-switch alarms of every detector are counted (the budget expects none here). Vectors
come from ``benchmarks/embedcache.py``'s cache outside the repository (computed on first
use, one torch thread). With a warm cache the default 3 seeds (108 streams of 3 000
events) take about 10 minutes on this shared 2-core machine; ``--seeds`` scales it:

    nice -n 10 python benchmarks/embedcache.py --only partial_shift
    nice -n 10 python benchmarks/partial_shift.py [--seeds 3] [--budget 1000000]

Prints JSON: ``summary`` (per kind and ρ, and the issue-4 targets) and per-stream rows.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from embedcache import EmbeddingCache, add_cache_argument

from driftmon.config import monitor_config, pipeline_config
from driftmon.core.detectors import FeatureStream
from driftmon.core.embeddings import EmbeddingReference, EmbeddingStream
from driftmon.core.pipeline import Pipeline
from driftmon.embedding import Sampler
from driftmon.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_outputs" / "alpaca_eval"
BASES = ("gpt4_0314", "claude-2.1", "gpt-3.5-turbo-0613", "Meta-Llama-3-70B-Instruct")
KINDS = ("preamble", "truncation", "refusal")
RHOS = (0.1, 0.3, 1.0)
# Issue 4: each detected by an embedding detector in a median of ≤ 300 embedded events.
TARGETS = (("preamble", 1.0), ("truncation", 1.0), ("refusal", 0.1))
TARGET_DELAY = 300
PREAMBLES = (  # one per prompt (by id), so each (model, prompt) has one shifted text
    "Certainly! I'd be happy to help you with that. Here's what you need to know:\n\n",
    "Great question! Let me walk you through it step by step.\n\n",
    "Sure thing! I'm glad you asked. Here's a detailed answer for you:\n\n",
)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "Sorry, but I can't assist with that.",
    "I apologize, but I'm unable to help with that request.",
)
# A sentence ends at . ! or ? after a letter, quote or bracket (not "1." of a list), followed
# by white space; a line break ends it too.
_SENTENCE_END = re.compile(r"(?<=[^\W\d_][.!?])\s|(?<=[\"')\]][.!?])\s|\n")
ENDPOINT, MODEL = "assistant", "production"
SCALAR_DETECTORS = ("embedding_distance", "cosine")


def first_sentence(text: str) -> str:
    """The answer cut to its first sentence (or first line).

    >>> first_sentence("Paris is the capital. It is big.")
    'Paris is the capital.'
    >>> first_sentence("Here are three:\\n1. One. Two.")
    'Here are three:'
    >>> first_sentence("  1. Buy milk. 2. Eggs.")
    '1. Buy milk.'
    """
    body = text.strip()
    m = _SENTENCE_END.search(body)
    out = body[: m.start()].strip() if m else body
    return out or body


def shifted(kind: str, pid: int, text: str, rng: random.Random) -> str:
    if kind == "preamble":
        return PREAMBLES[pid % len(PREAMBLES)] + text
    if kind == "truncation":
        return first_sentence(text)
    if kind == "refusal":
        return rng.choice(REFUSALS)
    raise ValueError(kind)


def load_outputs(model: str, data_dir: Path = DATA) -> dict[int, str]:
    outputs: dict[int, str] = {}
    with open(data_dir / f"{model}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if isinstance(row.get("output"), str) and row["output"].strip():
                outputs[int(row["instruction_id"])] = row["output"]
    return outputs


def embedding_sources(data_dir: Path = DATA) -> list[tuple[str, list[str]]]:
    """(cache source, texts) of every answer this benchmark can stream."""
    rng = random.Random(0)
    out: list[tuple[str, list[str]]] = [("partial_shift/refusal", list(REFUSALS))]
    for base in BASES:
        outputs = load_outputs(base, data_dir)
        out.append((f"alpaca_eval/{base}", list(outputs.values())))
        for kind in ("preamble", "truncation"):
            texts = [shifted(kind, pid, t, rng) for pid, t in outputs.items()]
            out.append((f"partial_shift/{kind}/{base}", texts))
    return out


class ScalarOnReference:
    """A score of each embedding against a reference fitted on the first ``fit_n``, fed
    to a calibrated FeatureStream (the distance as the monitor feeds
    ``embedding_distance``; cosine from the first held-out embedding on); an alarm
    re-learns the reference too."""

    def __init__(self, score: str, target_arl: float, settings: Settings) -> None:
        self.score = score
        self.target_arl = target_arl
        self.config = monitor_config(settings).detector
        self.relearn()

    def relearn(self) -> None:
        self.reference = EmbeddingReference()
        self.stream = FeatureStream(self.score, "continuous", self.target_arl, self.config)

    def update(self, v: np.ndarray) -> str | None:
        ref = self.reference
        if not ref.fitted:
            ref.add(v)
            return None
        if self.score == "cosine":
            values = [1.0 - ref.cosine_to_centroid(v)]
            if not ref.calibrated:
                ref.add(v)  # keeps the reference's own schedule; scores are used now
        elif ref.calibrated:
            values = [ref.distance_score(ref.mahalanobis(v))]
        else:  # as the monitor: held-out distances fed as normal scores once all are in
            ref.add(v)
            if not ref.calibrated:
                return None
            values = [ref.distance_score(d) for d in ref.held_out_distances]
        for value in values:
            alarm = self.stream.update(value)
            if alarm is not None:
                self.relearn()
                return alarm.detector
        return None


def run_stream(
    base: str,
    kind: str,
    rho: float,
    seed: int,
    outputs: dict[int, str],
    vectors: dict[str, np.ndarray],
    settings: Settings,
    before: int,
    after: int,
) -> dict[str, Any]:
    rng = random.Random(f"{base}|{kind}|{rho}|{seed}")
    ids = sorted(outputs)
    sampler = Sampler.from_settings(settings.embeddings)
    pipeline = Pipeline(pipeline_config(settings), sampler=sampler)
    # Stand-alone detectors, built once the pipeline has sized the key's budget.
    mewma: EmbeddingStream | None = None
    scalars: dict[str, ScalarOnReference] = {}
    # detector label -> event indices of its alarms
    fired: dict[str, list[int]] = {}
    embedded_after: dict[int, int] = {}
    n_after = shifted_n = 0
    for i in range(before + after):
        pid = rng.choice(ids)
        text = outputs[pid]
        source = base
        if i >= before and rng.random() < rho:
            text = shifted(kind, pid, text, rng)
            source = kind
            shifted_n += 1
        line = json.dumps(
            {"endpoint": ENDPOINT, "model": MODEL, "output": text, "id": f"{seed}-{i}"}
        )
        outcome = pipeline.process(line, i)
        if outcome.event is None:
            raise RuntimeError(f"event rejected: {outcome.rejection}")
        for d in outcome.detections:
            fired.setdefault(f"core:{d.feature}/{d.detector}", []).append(i)
        if not outcome.embed:
            continue
        if i >= before:
            embedded_after[i] = n_after
            n_after += 1
        v = vectors[source][pid] if source != "refusal" else vectors["refusal"][text]
        for d in pipeline.process_embedding(ENDPOINT, MODEL, v, i, None):
            fired.setdefault(f"pipeline:{d.feature}/{d.detector}", []).append(i)
        if mewma is None:
            state = pipeline.monitor.get(ENDPOINT, MODEL)
            assert state is not None
            mewma = EmbeddingStream(state.target_arl)
            scalars = {
                s: ScalarOnReference(s, state.target_arl, settings) for s in SCALAR_DETECTORS
            }
        if mewma.update(v).drift:
            fired.setdefault("mewma", []).append(i)
        for name, det in scalars.items():
            which = det.update(v)
            if which is not None:
                fired.setdefault(f"{name}/{which}", []).append(i)
    state = pipeline.monitor.get(ENDPOINT, MODEL)
    assert state is not None and mewma is not None

    # Delay of an alarm at event i: post-switch embedded events before it (0 = the first).
    embedded_before = np.cumsum([0] + [int(j in embedded_after) for j in range(before + after)])

    def first_after(prefix: str) -> tuple[int | None, str | None]:
        hits = [
            (int(embedded_before[i] - embedded_before[before]), label)
            for label, idx in fired.items()
            if label.startswith(prefix)
            for i in idx
            if i >= before
        ]
        return min(hits) if hits else (None, None)

    firsts = {
        "embedding": first_after("pipeline:"),
        "mewma": first_after("mewma"),
        "embedding_distance": first_after("embedding_distance/"),
        "cosine": first_after("cosine/"),
        "core": first_after("core:"),
    }
    delays = {k: v[0] for k, v in firsts.items()}
    pre = {label: sum(i < before for i in idx) for label, idx in fired.items()}
    return {
        "base": base,
        "kind": kind,
        "rho": rho,
        "seed": seed,
        "target_arl_per_detector": state.target_arl,
        "shifted_answers": shifted_n,
        "embedded_after_switch": n_after,
        "mewma_threshold": None if mewma.mewma is None else round(mewma.mewma.threshold, 2),
        "delay_embedded": delays,
        "first_detector": {k: v[1] for k, v in firsts.items() if v[1] is not None},
        "alarms_before_switch": {k: v for k, v in pre.items() if v},
    }


def _median(delays: list[int | None]) -> float | None:
    """Median with misses as infinite delays; None when it is a miss."""
    if not delays:
        return None
    m = statistics.median([math.inf if d is None else d for d in delays])
    return None if math.isinf(m) else m


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for kind in KINDS:
        for rho in RHOS:
            sel = [r for r in rows if r["kind"] == kind and r["rho"] == rho]
            if not sel:
                continue
            entry: dict[str, Any] = {"runs": len(sel)}
            for det in ("embedding", "mewma", "embedding_distance", "cosine", "core"):
                ds = [r["delay_embedded"][det] for r in sel]
                entry[det] = {
                    "detected": f"{sum(d is not None for d in ds)}/{len(ds)}",
                    "median_delay": _median(ds),
                }
            entry["pre_switch_alarms"] = sum(sum(r["alarms_before_switch"].values()) for r in sel)
            groups[f"{kind} rho={rho}"] = entry
    targets = {}
    for kind, rho in TARGETS:
        g = groups.get(f"{kind} rho={rho}")
        if g is None:
            continue
        med = g["embedding"]["median_delay"]
        targets[f"{kind} rho={rho}"] = {
            "median_delay_embedded": med,
            "met": med is not None and med <= TARGET_DELAY,
        }
    pre: dict[str, int] = {}
    for r in rows:
        for label, n in r["alarms_before_switch"].items():
            pre[label] = pre.get(label, 0) + n
    return {"by_kind_rho": groups, "targets_median_le_300": targets, "pre_switch_alarms": pre}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="streams per base model, kind and ρ")
    ap.add_argument("--bases", nargs="+", default=list(BASES))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--rhos", nargs="+", type=float, default=list(RHOS))
    ap.add_argument("--before", type=int, default=1500, help="events before the switch")
    ap.add_argument("--after", type=int, default=1500, help="events after the switch")
    ap.add_argument("--budget", type=float, default=None, help="events per false alarm per key")
    ap.add_argument("--sample-rate", type=float, default=1.0, help="embedding sample rate")
    ap.add_argument("--data", type=Path, default=DATA)
    add_cache_argument(ap)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"shared data not found at {args.data}")
    overrides: dict[str, Any] = {
        "embeddings": {
            "enabled": True,
            "sample_rate": args.sample_rate,
            "budget_per_second": 1e9,  # no timestamps: the sampler's clock is the index
        }
    }
    if args.budget:
        overrides["detectors"] = {"events_per_false_alarm": args.budget}
    settings = Settings(**overrides)
    cache = EmbeddingCache(args.cache_dir, settings)
    rng = random.Random(0)
    rows = []
    start = time.perf_counter()
    refusal = dict(zip(REFUSALS, cache.embed("partial_shift/refusal", list(REFUSALS)), strict=True))
    for base in args.bases:
        outputs = load_outputs(base, args.data)
        ids = list(outputs)
        vectors: dict[str, Any] = {"refusal": refusal}
        vectors[base] = dict(
            zip(ids, cache.embed(f"alpaca_eval/{base}", [outputs[i] for i in ids]), strict=True)
        )
        for kind in ("preamble", "truncation"):
            texts = [shifted(kind, pid, outputs[pid], rng) for pid in ids]
            rows_k = cache.embed(f"partial_shift/{kind}/{base}", texts)
            vectors[kind] = dict(zip(ids, rows_k, strict=True))
        for kind in args.kinds:
            for rho in args.rhos:
                for seed in range(args.seeds):
                    row = run_stream(
                        base, kind, rho, seed, outputs, vectors, settings, args.before, args.after
                    )
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    summary = {
        "budget_events_per_false_alarm": settings.detectors.events_per_false_alarm,
        "sample_rate": settings.embeddings.sample_rate,
        "note": "every event embedded: delays in events and embedded events coincide"
        if settings.embeddings.sample_rate >= 1.0
        else "sampled: delays are in embedded events",
        "events_before_switch": args.before,
        "events_after_switch": args.after,
        "bases": args.bases,
        "seeds": args.seeds,
        "streams": len(rows),
        "seconds": round(time.perf_counter() - start, 1),
        **summarise(rows),
    }
    print(json.dumps({"summary": summary, "streams": rows}, indent=1))


if __name__ == "__main__":
    main()
