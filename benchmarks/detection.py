"""Detection quality on real model upgrades (../shared/data/llm_outputs/alpaca_eval).

For each pair (A → B) a stream of 3000 events of model A then 3000 of model B, prompts
drawn at random with replacement (the same way before and after), all under one endpoint
and one model label: a silent upgrade. The two no-change controls are built the same way.
Each pair is run with several seeds. Prints JSON.

    python benchmarks/detection.py [--seeds 5] [--budget 1000000]

With ``--embeddings`` every stream is run twice in the same process: core only, and with
the embedding detectors on (sampled events embedded with MiniLM, ``embedding/mewma`` and
``embedding_distance/*``). The JSON then tells, per pair, which detections come from
embedding features, whether every run the core detects stays detected, and whether the
controls and the pre-switch segments stay silent. This mode adds the llmdrift
``sensitiveq`` gpt-4-0314 → gpt-4-0613 switch (100 prompts; answers collapse to short
refusals). Embeddings come from ``benchmarks/embedcache.py``'s cache outside the repo
(computed on first use: 10–20 minutes on one torch thread; warm it first, niced):

    nice -n 10 python benchmarks/embedcache.py --only detection
    nice -n 10 python benchmarks/detection.py --embeddings [--seeds 5] [--sample-rate 1.0]

By default this offline benchmark embeds EVERY event (sample rate 1.0), unlike the
daemon's default 0.1. A key's MEWMA needs 400 embedded events (200 to fit the reference,
200 held out to calibrate) and its ``embedding_distance`` stream, fed from the 201st, a
300-value warm-up (ready at the 500th). At 0.1 (a key's first 50 events always taken)
that is ~3 550 and ~4 550 events, past the 3 000-event switch, so the reference would be
learned partly on the new model. ``--sample-rate 0.1`` runs that anyway; each run reports
how many events were embedded before the switch.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from embedcache import add_cache_argument

from driftmon.config import pipeline_config
from driftmon.core.monitor import Detection
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
# Only with --embeddings (the core-only output stays as it was): a real switch to refusals.
EMBEDDING_PAIRS: list[tuple[str, str, str]] = [
    ("llmdrift/sensitiveq__gpt-4-0314", "llmdrift/sensitiveq__gpt-4-0613", "refusal"),
]
PER_SIDE = 3000
EMBEDDING_FEATURES = ("embedding", "embedding_distance")


def load_outputs(model: str, data_dir: Path) -> dict[int, str]:
    """instruction id → output; ``model`` is an alpaca_eval file or ``<dir>/<file>`` beside it."""
    path = (data_dir.parent if "/" in model else data_dir) / f"{model}.jsonl"
    outputs: dict[int, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if isinstance(row.get("output"), str):
                outputs[int(row["instruction_id"])] = row["output"]
    return outputs


def draws(a: dict[int, str], b: dict[int, str], seed: int) -> list[int]:
    """The prompt of each of the 2 × 3000 events, drawn at random from those both answered."""
    ids = sorted(set(a) & set(b))
    rng = random.Random(seed)
    return [rng.choice(ids) for _ in range(2 * PER_SIDE)]


def stream(a: dict[int, str], b: dict[int, str], seed: int) -> list[str]:
    """3000 answers of A then 3000 of B to prompts drawn at random from those both answered."""
    lines = []
    for i, pid in enumerate(draws(a, b, seed)):
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
        pipeline = Pipeline(pipeline_config(settings))
        detections = []
        for index, line in enumerate(stream(a, b, seed)):
            detections.extend(pipeline.process(line, index).detections)
        before = [d for d in detections if d.event_index < PER_SIDE]
        after = [d for d in detections if d.event_index >= PER_SIDE]
        first = min((d.event_index for d in after), default=None)
        first_det = next((d for d in after if d.event_index == first), None)
        runs.append(
            {
                "seed": seed,
                "detected": first is not None,
                "delay": None if first is None else first - PER_SIDE,
                # Where the first detection's detector puts the start of the change (one
                # key, one value per event: its index in the stream), minus the switch.
                "onset_error": None
                if first_det is None or first_det.events_since_onset is None
                else first_det.event_index - first_det.events_since_onset + 1 - PER_SIDE,
                "features_fired": sorted({f"{d.feature}/{d.detector}" for d in after}),
                "first_feature": next(
                    (f"{d.feature}/{d.detector}" for d in after if d.event_index == first), None
                ),
                "alarms_before_switch": [
                    f"{d.feature}/{d.detector}@{d.event_index}" for d in before
                ],
                # The one key's state as a checkpoint pickles it, after the stream.
                "key_state_bytes": sum(
                    len(pickle.dumps(k, protocol=5)) for k in pipeline.monitor.key_states()
                ),
            }
        )
    delays = [r["delay"] for r in runs if r["delay"] is not None]
    onset_errors = [abs(r["onset_error"]) for r in runs if r["onset_error"] is not None]
    return {
        "pair": f"{a_name} -> {b_name}",
        "kind": kind,
        "detected_runs": sum(r["detected"] for r in runs),
        "runs": len(runs),
        "median_delay": statistics.median(delays) if delays else None,
        "median_abs_onset_error": statistics.median(onset_errors) if onset_errors else None,
        "alarms_before_switch": sum(len(r["alarms_before_switch"]) for r in runs),
        "details": runs,
    }


# -- embeddings on -------------------------------------------------------------------


def embedding_sources(data_dir: Path = DATA) -> list[tuple[str, list[str]]]:
    """(cache source, texts) of every answer the --embeddings mode streams."""
    names = sorted({m for a, b, _ in PAIRS + EMBEDDING_PAIRS for m in (a, b)})
    out = []
    for name in names:
        outputs = load_outputs(name, data_dir)
        out.append((f"{name if '/' in name else 'alpaca_eval/' + name}", list(outputs.values())))
    return out


def _is_embedding(d: Detection) -> bool:
    return d.feature in EMBEDDING_FEATURES


def _label(d: Detection) -> str:
    return f"{d.feature}/{d.detector}"


def run_pair_embeddings(
    a_name: str,
    b_name: str,
    kind: str,
    seeds: int,
    settings: Settings,
    data_dir: Path,
    cache: Any,
) -> dict[str, Any]:
    """Each seed's stream through the core alone and through the core with embeddings."""
    from driftmon.embedding import Sampler

    a, b = load_outputs(a_name, data_dir), load_outputs(b_name, data_dir)
    sources = dict(embedding_sources(data_dir))
    vec: dict[str, dict[int, Any]] = {}
    for name, outputs in ((a_name, a), (b_name, b)):
        source = name if "/" in name else f"alpaca_eval/{name}"
        assert source in sources
        ids = list(outputs)
        rows = cache.embed(source, [outputs[i] for i in ids])
        vec[name] = dict(zip(ids, rows, strict=True))
    runs = []
    for seed in range(seeds):
        pids = draws(a, b, seed)
        lines = stream(a, b, seed)
        core = Pipeline(pipeline_config(settings))
        core_found: list[Detection] = []
        for index, line in enumerate(lines):
            core_found.extend(core.process(line, index).detections)
        sampler = Sampler.from_settings(settings.embeddings)
        pipeline = Pipeline(pipeline_config(settings), sampler=sampler)
        found: list[Detection] = []
        embedded_before = embedded_after = 0
        embedded_at: dict[int, int] = {}  # event index -> post-switch embedded events before it
        for index, line in enumerate(lines):
            outcome = pipeline.process(line, index)
            found.extend(outcome.detections)
            if outcome.embed and outcome.event is not None:
                after = index >= PER_SIDE
                vector = vec[b_name if after else a_name][pids[index]]
                if after:
                    embedded_at[index] = embedded_after
                    embedded_after += 1
                else:
                    embedded_before += 1
                ev = outcome.event
                found.extend(pipeline.process_embedding(ev.endpoint, ev.model, vector, index, None))
        state = pipeline.monitor.get("assistant", "production")
        emb_state = state.embedding if state is not None else None
        before = [d for d in found if d.event_index < PER_SIDE]
        after_d = [d for d in found if d.event_index >= PER_SIDE]
        emb_after = [d for d in after_d if _is_embedding(d)]
        first = min((d.event_index for d in after_d), default=None)
        emb_first = min((d.event_index for d in emb_after), default=None)
        core_after = [d for d in core_found if d.event_index >= PER_SIDE]
        core_first = min((d.event_index for d in core_after), default=None)
        runs.append(
            {
                "seed": seed,
                "core_only_detected": core_first is not None,
                "core_only_delay": None if core_first is None else core_first - PER_SIDE,
                "core_only_alarms_before_switch": sum(d.event_index < PER_SIDE for d in core_found),
                "detected": first is not None,
                "delay": None if first is None else first - PER_SIDE,
                "first_feature": next((_label(d) for d in after_d if d.event_index == first), None),
                "features_fired": sorted({_label(d) for d in after_d}),
                "embedding_detected": emb_first is not None,
                "embedding_delay_events": None if emb_first is None else emb_first - PER_SIDE,
                "embedding_delay_embedded": None if emb_first is None else embedded_at[emb_first],
                "embedding_first": next(
                    (_label(d) for d in emb_after if d.event_index == emb_first), None
                ),
                "embedding_fired": sorted({f"{_label(d)}@{d.event_index}" for d in emb_after}),
                "alarms_before_switch": [f"{_label(d)}@{d.event_index}" for d in before],
                "embedded_before_switch": embedded_before,
                "embedded_after_switch": embedded_after,
                "reference_calibrated_at_end": bool(
                    emb_state is not None and emb_state.reference.calibrated
                ),
            }
        )
    delays = [r["delay"] for r in runs if r["delay"] is not None]
    emb_delays = [r["embedding_delay_embedded"] for r in runs if r["embedding_detected"]]
    first_emb: dict[str, int] = {}
    for r in runs:
        if r["embedding_first"]:
            first_emb[r["embedding_first"]] = first_emb.get(r["embedding_first"], 0) + 1
    return {
        "pair": f"{a_name} -> {b_name}",
        "kind": kind,
        "runs": len(runs),
        "core_only_detected_runs": sum(r["core_only_detected"] for r in runs),
        "detected_runs": sum(r["detected"] for r in runs),
        "core_detections_kept": all(r["detected"] for r in runs if r["core_only_detected"]),
        "median_delay": statistics.median(delays) if delays else None,
        "embedding_detected_runs": sum(r["embedding_detected"] for r in runs),
        "embedding_median_delay_embedded": statistics.median(emb_delays) if emb_delays else None,
        "embedding_first_detector": first_emb,
        "alarms_before_switch": sum(len(r["alarms_before_switch"]) for r in runs),
        "embedding_alarms_before_switch": sum(
            a.split("/")[0] in EMBEDDING_FEATURES for r in runs for a in r["alarms_before_switch"]
        ),
        "details": runs,
    }


def main_embeddings(args: argparse.Namespace, settings: Settings) -> None:
    from embedcache import EmbeddingCache

    cache = EmbeddingCache(args.cache_dir, settings)
    rows = []
    for a_name, b_name, kind in PAIRS + EMBEDDING_PAIRS:
        row = run_pair_embeddings(a_name, b_name, kind, args.seeds, settings, args.data, cache)
        brief = {k: v for k, v in row.items() if k != "details"}
        print(json.dumps(brief), file=sys.stderr, flush=True)
        rows.append(row)
    changes = [r for r in rows if r["kind"] != "control"]
    controls = [r for r in rows if r["kind"] == "control"]
    runs = [d for r in rows for d in r["details"]]
    summary = {
        "budget_events_per_false_alarm": settings.detectors.events_per_false_alarm,
        "embeddings": True,
        "sample_rate": settings.embeddings.sample_rate,
        "note": (
            "every event embedded (offline benchmark); the daemon default is 0.1"
            if settings.embeddings.sample_rate >= 1.0
            else "production-like sampling: see embedded_before_switch per run"
        ),
        "embedded_before_switch_min": min(d["embedded_before_switch"] for d in runs),
        "core_only_detected_runs": sum(r["core_only_detected_runs"] for r in rows),
        "core_detections_kept": all(r["core_detections_kept"] for r in rows),
        "detected_runs": sum(r["detected_runs"] for r in changes),
        "change_runs": sum(r["runs"] for r in changes),
        "embedding_detected": {
            r["pair"]: f"{r['embedding_detected_runs']}/{r['runs']}" for r in changes
        },
        "sensitiveq_embedding_detected_runs": sum(
            r["embedding_detected_runs"] for r in rows if "sensitiveq" in r["pair"]
        ),
        "control_alarms": sum(r["alarms_before_switch"] + r["detected_runs"] for r in controls),
        "pre_switch_alarms": sum(r["alarms_before_switch"] for r in rows),
        "pre_switch_embedding_alarms": sum(r["embedding_alarms_before_switch"] for r in rows),
    }
    summary["gate_passed"] = bool(
        summary["core_detections_kept"]
        and summary["control_alarms"] == 0
        and summary["pre_switch_alarms"] == 0
    )
    print(json.dumps({"summary": summary, "pairs": rows}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=None, help="events per false alarm per key")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--embeddings", action="store_true", help="also run with embeddings on")
    ap.add_argument(
        "--sample-rate", type=float, default=1.0, help="embedding sample rate (--embeddings)"
    )
    add_cache_argument(ap)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"shared data not found at {args.data}")
    overrides: dict[str, Any] = {}
    if args.budget:
        overrides["detectors"] = {"events_per_false_alarm": args.budget}
    if args.embeddings:
        overrides["embeddings"] = {
            "enabled": True,
            "sample_rate": args.sample_rate,
            "budget_per_second": 1e9,  # no timestamps here: the sampler's clock is the index
        }
        main_embeddings(args, Settings(**overrides))
        return
    settings = Settings(**overrides)
    rows = []
    for a_name, b_name, kind in PAIRS:
        row = run_pair(a_name, b_name, kind, args.seeds, settings, args.data)
        brief = {k: v for k, v in row.items() if k != "details"}
        print(json.dumps(brief), file=sys.stderr, flush=True)
        rows.append(row)
    easy = [r for r in rows if r["kind"] in ("length", "format")]
    easy_delays = [r["median_delay"] for r in easy if r["median_delay"] is not None]
    onset_errors = [
        abs(d["onset_error"])
        for r in rows
        if r["kind"] != "control"
        for d in r["details"]
        if d["onset_error"] is not None
    ]
    summary = {
        "budget_events_per_false_alarm": settings.detectors.events_per_false_alarm,
        "easy_pairs_all_detected": all(r["detected_runs"] == r["runs"] for r in easy),
        "easy_pairs_median_delay": statistics.median(easy_delays) if easy_delays else None,
        # |estimated onset - switch| of the first detection, in events, over all runs
        "detected_pairs_median_abs_onset_error": statistics.median(onset_errors)
        if onset_errors
        else None,
        "hard_pairs_detected": [
            r["pair"] for r in rows if r["kind"] == "hard" and r["detected_runs"]
        ],
        "control_alarms": sum(
            r["alarms_before_switch"] + r["detected_runs"] for r in rows if r["kind"] == "control"
        ),
        "pre_switch_alarms": sum(r["alarms_before_switch"] for r in rows),
        "median_key_state_bytes": statistics.median(
            d["key_state_bytes"] for r in rows for d in r["details"]
        ),
    }
    print(json.dumps({"summary": summary, "pairs": rows}, indent=1))


if __name__ == "__main__":
    main()
