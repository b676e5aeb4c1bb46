"""Version transitions on real model upgrades (../shared/data/llm_outputs/alpaca_eval).

Measures issue 12's "Done when" points with driftmon's own feature extractor and
:class:`driftmon.core.transitions.TransitionTracker`, following the research protocol
(shared/research/version_transitions.md §4.7): prompts drawn at random with replacement,
independently for the old and the new version; a fresh tracker per replication, fed an
old-version-only warm period first (its ``profile`` is those ``N_REF`` old draws), then:

* ``concurrent``: old and new events interleaved 50/50 (a fair coin per event) until
  ``--horizon`` new events. Upgrade pairs: new-version events when the overall verdict
  first leaves ``pending`` for ``changed``/``breaking``, and the features that made it.
  Re-run controls and A/A (the same file on both sides under two labels): the share of
  runs that EVER showed a false ``changed``/``breaking``, read after every statistics
  update (every transition the tracker returns).
* ``snapshot``: the old reference, then only new events.
* ``prompt_mix``: an unchanged model whose new side gets a shifted prompt mix (S1:
  selfinstruct ×4; S2: helpful_base + vicuna ×3): share ``confounded`` and not ending
  ``changed``, share with any output feature ``changed`` (what the guard withholds), then
  the same with ``stratify_by=("dataset",)``.
* ``paired``: a golden set (both models' answers to the same prompt) fed through
  ``Transition.observe_pair`` in a random order, against the unpaired concurrent stream.
* ``cost``: µs per event through ``TransitionTracker.observe`` (none open, one open at
  50/50) and through ``Pipeline.process`` (transitions enabled, disabled), interleaved.

Judge preferences (``weighted_alpaca_eval_gpt4_turbo``, preference − 1 in [0, 1]) are the
``feedback`` feature when both sides of a comparison have them. Prints one JSON document
(progress on stderr)::

    python benchmarks/transitions.py [--reps R] [--horizon T] [--seed S] [--only NAME]

``--reps`` is the number of replications for the upgrade pairs (controls and A/A get twice
as many, snapshot and prompt-mix runs half); ``--only`` takes a comma-separated list of
sections (concurrent, snapshot, prompt_mix, paired, cost).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from driftmon.config import feature_config, pipeline_config
from driftmon.core.events import Event
from driftmon.core.features import FeatureExtractor
from driftmon.core.pipeline import Pipeline, PipelineConfig
from driftmon.core.transitions import Transition, TransitionConfig, TransitionTracker
from driftmon.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_outputs"
DATA = SHARED / "alpaca_eval"
PREFS = SHARED / "judge_prefs" / "weighted_alpaca_eval_gpt4_turbo"
ENDPOINT = "bench"
N_REF = 2000  # old-version draws in the warm period, and so in the snapshot
SECTIONS = ("concurrent", "snapshot", "prompt_mix", "paired", "cost")

UPGRADES: list[tuple[str, str]] = [
    ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613"),
    ("text_davinci_003", "gpt-3.5-turbo-0301"),
    ("gpt4_0314", "gpt4_0613"),
    ("claude-2.1", "claude-3-opus-20240229"),
    ("llama-2-70b-chat-hf", "Meta-Llama-3-70B-Instruct"),
    ("gpt-3.5-turbo-0613", "gemini-pro"),
    ("claude-2", "claude-2.1"),
    ("gpt-4-turbo-2024-04-09", "gpt-4o-2024-05-13"),
]
CONTROLS: list[tuple[str, str]] = [
    ("gpt4__alias-gpt-4_run2023", "gpt4_0314"),
    ("vicuna-13b-v1.5", "vicuna-13b-v1.5-togetherai"),
]
AA_MODELS = ("gpt4_0314", "vicuna-13b-v1.5", "claude-2")
# The prototype's medians (research notes §4.5): the targets, within 1.3×.
TARGETS = {
    "gpt4_0314->gpt4_0613": 204,
    "gpt-3.5-turbo-0301->gpt-3.5-turbo-0613": 255,
    "gpt-4-turbo-2024-04-09->gpt-4o-2024-05-13": 323,
    "claude-2->claude-2.1": 672,
}
TARGET_FACTOR = 1.3
NULL_TARGET = 0.01
MIX_TARGET = 0.95
SHIFTS = {"S1": ({"selfinstruct"}, 4.0), "S2": ({"helpful_base", "vicuna"}, 3.0)}
CALLED = ("changed", "breaking")


# -- data -------------------------------------------------------------------------------
@dataclass
class Model:
    """One model's 805 answers: events and features, indexed by instruction id."""

    name: str
    ids: np.ndarray  # instruction ids with an output
    events: dict[int, Event]
    features: dict[int, dict[str, float]]
    feedback: dict[int, float] | None


class Data:
    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self.names = extractor.feature_names(ENDPOINT)
        self._models: dict[tuple[str, str, bool], Model] = {}
        self._raw: dict[str, Model] = {}
        self.dataset: dict[int, str] = {}

    def _load(self, name: str) -> Model:
        if name in self._raw:
            return self._raw[name]
        events: dict[int, Event] = {}
        features: dict[int, dict[str, float]] = {}
        with open(DATA / f"{name}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                i = int(row["instruction_id"])
                self.dataset[i] = row["dataset"]
                if not isinstance(row.get("output"), str):
                    continue
                e = Event(
                    kind="completion",
                    endpoint=ENDPOINT,
                    model=name,
                    output=row["output"],
                    input=row["instruction"],
                    id=str(i),
                    attributes={"dataset": row["dataset"]},
                )
                events[i] = e
                features[i] = self.extractor.extract(e)
        feedback = None
        prefs = PREFS / f"{name}.jsonl"
        if prefs.exists():
            with open(prefs, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh]
            feedback = {int(r["instruction_id"]): float(r["preference"]) - 1.0 for r in rows}
        ids = np.array(sorted(events), dtype=np.int64)
        model = self._raw[name] = Model(name, ids, events, features, feedback)
        return model

    def model(self, name: str, label: str, with_feedback: bool) -> Model:
        """``name``'s answers under the model label ``label`` (A/A: a second label), with
        judge feedback as a feature when asked and available."""
        key = (name, label, with_feedback)
        if key not in self._models:
            raw = self._load(name)
            events, features = raw.events, raw.features
            if label != name:
                events = {i: _relabel(e, label) for i, e in events.items()}
            if with_feedback and raw.feedback is not None:
                fb = raw.feedback
                features = {i: {**f, "feedback": fb[i]} for i, f in features.items() if i in fb}
            self._models[key] = Model(label, raw.ids, events, features, raw.feedback)
        return self._models[key]

    def side_pair(self, old: str, new: str) -> tuple[Model, Model]:
        """The two sides of a comparison; A/A when ``old == new`` (the new side relabelled)."""
        with_fb = self._load(old).feedback is not None and self._load(new).feedback is not None
        new_label = f"{new}#rerun" if old == new else new
        return self.model(old, old, with_fb), self.model(new, new_label, with_fb)

    def has_feedback(self, old: str, new: str) -> bool:
        return self._load(old).feedback is not None and self._load(new).feedback is not None

    def matrix(self, model: Model) -> tuple[np.ndarray, np.ndarray]:
        """Feature values (NaN where absent), rows in ``model.ids`` order; and the ids."""
        rows = [[model.features[int(i)].get(f, math.nan) for f in self.names] for i in model.ids]
        return np.array(rows, dtype=np.float64), model.ids


# The configuration every run uses (--input-alpha changes it).
BASE = TransitionConfig()


def _relabel(e: Event, label: str) -> Event:
    return Event(
        kind=e.kind,
        endpoint=e.endpoint,
        model=label,
        output=e.output,
        input=e.input,
        id=e.id,
        attributes=e.attributes,
    )


def profile_of(data: Data, model: Model, ids: np.ndarray) -> tuple[int, dict[str, Any]]:
    """A snapshot as :meth:`driftmon.core.monitor.Monitor.profile` gives it."""
    values, order = data.matrix(model)
    pos = {int(i): k for k, i in enumerate(order)}
    x = values[[pos[int(i)] for i in ids]]
    ok = ~np.isnan(x)
    z = np.where(ok, x, 0.0)
    n, s, ss = ok.sum(axis=0), z.sum(axis=0), (z * z).sum(axis=0)
    stats = {
        f: (float(n[k]), float(s[k]), float(ss[k])) for k, f in enumerate(data.names) if n[k] > 0
    }
    return len(ids), stats


# -- one replication ----------------------------------------------------------------------
@dataclass
class Run:
    at: int | None  # new-version events when the overall verdict first became changed/breaking
    first: list[str]  # the features changed/breaking then
    confounded_end: bool
    verdict_end: str
    any_feature_called: bool  # an output feature changed/breaking at the end (sticky)
    called_features: list[str]
    mode_end: str


def _rng(seed: int, *parts: object) -> np.random.Generator:
    words = [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def _draws(rng: np.random.Generator, ids: np.ndarray, n: int, p: np.ndarray | None) -> list[int]:
    return [int(i) for i in rng.choice(ids, size=n, replace=True, p=p)]


def mix_weights(data: Data, ids: np.ndarray, shift: str | None) -> np.ndarray | None:
    if shift is None:
        return None
    datasets, factor = SHIFTS[shift]
    w = np.array([factor if data.dataset[int(i)] in datasets else 1.0 for i in ids], dtype=float)
    out: np.ndarray = w / w.sum()
    return out


def replicate(
    data: Data,
    old: Model,
    new: Model,
    rng: np.random.Generator,
    horizon: int,
    config: TransitionConfig,
    concurrent: bool,
    stop_at_verdict: bool,
    new_weights: np.ndarray | None = None,
) -> Run:
    tracker = TransitionTracker(config)
    names = data.names
    ref_ids = rng.choice(old.ids, size=N_REF, replace=True)
    snapshot = profile_of(data, old, ref_ids)

    def profile(endpoint: str, model: str) -> tuple[int, dict[str, Any]]:
        return snapshot

    def feature_names(endpoint: str) -> tuple[str, ...]:
        return names

    observe = tracker.observe
    o_ev, o_f, n_ev, n_f = old.events, old.features, new.events, new.features
    for i in ref_ids.tolist():
        observe(o_ev[i], o_f[i], None, profile, feature_names)
    at: int | None = None
    first: list[str] = []
    chunk = 1024
    new_ids: list[int] = []
    old_ids: list[int] = []
    coins: list[bool] = []
    seen = 0
    while seen < horizon:
        if not coins:
            coins = (rng.random(chunk) < 0.5).tolist() if concurrent else [True] * chunk
        if not new_ids:
            new_ids = _draws(rng, new.ids, chunk, new_weights)
        if not old_ids:
            old_ids = _draws(rng, old.ids, chunk, None)
        if coins.pop():
            i = new_ids.pop()
            changed = observe(n_ev[i], n_f[i], None, profile, feature_names)
            seen += 1
        else:
            i = old_ids.pop()
            changed = observe(o_ev[i], o_f[i], None, profile, feature_names)
        for c in changed:
            if at is None and c.verdict in CALLED:
                at = c.new_events_at_verdict
                first = [r["feature"] for r in c.features() if r["verdict"] in CALLED]
        if at is not None and stop_at_verdict:
            break
    if at is None or not stop_at_verdict:
        for c in tracker.flush():
            if at is None and c.verdict in CALLED:
                at = c.new_events_at_verdict
                first = [r["feature"] for r in c.features() if r["verdict"] in CALLED]
    t = tracker.transitions()[-1]
    rows = t.features()
    called = [r["feature"] for r in rows if r["verdict"] in CALLED]
    return Run(at, first, t.confounded, t.verdict, bool(called), called, t.mode)


# -- summaries ----------------------------------------------------------------------------
def _q(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values, dtype=np.float64), q, method="inverted_cdf"))


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 3)


def summarise_detection(runs: list[Run], horizon: int, name: str) -> dict[str, Any]:
    ats = [float(r.at) if r.at is not None else math.inf for r in runs]
    firsts = Counter(f for r in runs for f in r.first)
    out: dict[str, Any] = {
        "reps": len(runs),
        "median": _num(_q(ats, 0.5)),
        "p10": _num(_q(ats, 0.1)),
        "p90": _num(_q(ats, 0.9)),
        "detected_by_horizon": round(sum(r.at is not None for r in runs) / len(runs), 4),
        "first_features": {f: round(c / len(runs), 3) for f, c in firsts.most_common()},
        # Confounded (input side differs) when the run stopped: verdict withheld.
        "confounded_share": round(sum(r.confounded_end for r in runs) / len(runs), 4),
    }
    target = TARGETS.get(name)
    if target is not None:
        med = _q(ats, 0.5)
        out["target"] = target
        out["ratio_to_target"] = _num(med / target)
        out["within_target"] = bool(med <= TARGET_FACTOR * target)
    return out


def summarise_null(runs: list[Run]) -> dict[str, Any]:
    false = [r for r in runs if r.at is not None]
    feats = Counter(f for r in false for f in r.first)
    share = len(false) / len(runs)
    return {
        "reps": len(runs),
        "false_called_share": round(share, 4),
        "false_called_runs": len(false),
        "false_features": dict(feats.most_common()),
        "false_at": sorted(int(r.at) for r in false if r.at is not None),
        "within_target": share <= NULL_TARGET,
        "any_feature_called_share": round(sum(r.any_feature_called for r in runs) / len(runs), 4),
        "confounded_share": round(sum(r.confounded_end for r in runs) / len(runs), 4),
    }


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pair_name(old: str, new: str) -> str:
    return f"{old}->{new}" if old != new else f"A/A {old}"


def run_pairs(
    data: Data,
    pairs: Iterable[tuple[str, str]],
    reps: int,
    horizon: int,
    seed: int,
    config: TransitionConfig,
    concurrent: bool,
    null: bool,
    tag: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for old_name, new_name in pairs:
        old, new = data.side_pair(old_name, new_name)
        name = pair_name(old_name, new_name)
        t0 = time.perf_counter()
        runs = [
            replicate(
                data,
                old,
                new,
                _rng(seed, tag, name, r),
                horizon,
                config,
                concurrent,
                stop_at_verdict=not null,
            )
            for r in range(reps)
        ]
        summary = summarise_null(runs) if null else summarise_detection(runs, horizon, name)
        summary["feedback"] = data.has_feedback(old_name, new_name)
        summary["modes_at_end"] = dict(Counter(r.mode_end for r in runs))
        out[name] = summary
        _progress(f"{tag} {name}: {json.dumps(summary)[:300]} ({time.perf_counter() - t0:.0f}s)")
    return out


def nulls() -> list[tuple[str, str]]:
    return [*CONTROLS, *((m, m) for m in AA_MODELS)]


# -- sections -----------------------------------------------------------------------------
def section_concurrent(data: Data, args: argparse.Namespace) -> dict[str, Any]:
    config = BASE
    return {
        "upgrades": run_pairs(
            data, UPGRADES, args.reps, args.horizon, args.seed, config, True, False, "conc"
        ),
        "nulls": run_pairs(
            data, nulls(), 2 * args.reps, args.horizon, args.seed, config, True, True, "conc"
        ),
    }


def section_snapshot(data: Data, args: argparse.Namespace) -> dict[str, Any]:
    config = BASE
    reps = max(args.reps // 2, 1)
    return {
        "n_ref": N_REF,
        "upgrades": run_pairs(
            data, UPGRADES, reps, args.horizon, args.seed, config, False, False, "snap"
        ),
        "nulls": run_pairs(
            data, nulls(), 2 * reps, args.horizon, args.seed, config, False, True, "snap"
        ),
    }


def section_prompt_mix(data: Data, args: argparse.Namespace) -> dict[str, Any]:
    reps = max(args.reps // 2, 1)
    configs = {
        "default": BASE,
        "stratify_by_dataset": replace(BASE, stratify_by=("dataset",)),
    }
    out: dict[str, Any] = {}
    for cname, config in configs.items():
        for shift in SHIFTS:
            for old_name, new_name in [(AA_MODELS[0], AA_MODELS[0]), *CONTROLS]:
                old, new = data.side_pair(old_name, new_name)
                name = pair_name(old_name, new_name)
                weights = mix_weights(data, new.ids, shift)
                t0 = time.perf_counter()
                runs = [
                    replicate(
                        data,
                        old,
                        new,
                        _rng(args.seed, "mix", cname, shift, name, r),
                        args.horizon,
                        config,
                        True,
                        stop_at_verdict=False,
                        new_weights=weights,
                    )
                    for r in range(reps)
                ]
                n = len(runs)
                guarded = sum(r.confounded_end and r.verdict_end not in CALLED for r in runs)
                features = Counter(f for r in runs for f in r.called_features)
                summary = {
                    "reps": n,
                    "confounded_not_changed_share": round(guarded / n, 4),
                    "confounded_share": round(sum(r.confounded_end for r in runs) / n, 4),
                    "ever_called_share": round(sum(r.at is not None for r in runs) / n, 4),
                    "ending_called_share": round(sum(r.verdict_end in CALLED for r in runs) / n, 4),
                    "unguarded_called_share": round(sum(r.any_feature_called for r in runs) / n, 4),
                    "called_features": {f: round(c / n, 3) for f, c in features.most_common()},
                    "modes_at_end": dict(Counter(r.mode_end for r in runs)),
                }
                if cname == "default":
                    summary["within_target"] = guarded / n >= MIX_TARGET
                out.setdefault(cname, {}).setdefault(shift, {})[name] = summary
                _progress(
                    f"mix {cname} {shift} {name}: {json.dumps(summary)[:300]} "
                    f"({time.perf_counter() - t0:.0f}s)"
                )
    return out


def paired_run(
    data: Data, old: Model, new: Model, rng: np.random.Generator, horizon: int
) -> int | None:
    """Events to ``changed``/``breaking`` on the golden set: both answers to each prompt,
    each prompt once in a random order, then reshuffled rounds."""
    ids = np.intersect1d(old.ids, new.ids)
    config = BASE
    t = Transition(
        1,
        ENDPOINT,
        old.name,
        new.name,
        "model",
        None,
        data.names,
        profile_of(data, old, old.ids),
        None,
        config,
        None,
        (),
    )
    seen = 0
    while seen < horizon:
        for i in rng.permutation(ids).tolist():
            t.observe_pair(old.events[i], old.features[i], new.events[i], new.features[i])
            seen += 1
            if t.due() and t.update() and t.verdict in CALLED:
                return t.new_events_at_verdict
            if seen >= horizon:
                break
    t.update()
    return t.new_events_at_verdict if t.verdict in CALLED else None


def section_paired(
    data: Data, args: argparse.Namespace, unpaired: dict[str, Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for old_name, new_name in [*UPGRADES, *nulls()]:
        old, new = data.side_pair(old_name, new_name)
        name = pair_name(old_name, new_name)
        null = (old_name, new_name) not in UPGRADES
        reps = 2 * args.reps if null else args.reps
        ats = [
            paired_run(data, old, new, _rng(args.seed, "paired", name, r), args.horizon)
            for r in range(reps)
        ]
        values = [float(a) if a is not None else math.inf for a in ats]
        # Beyond one pass the same pairs come back: the evidence is about these 805 answers.
        one_pass = len(np.intersect1d(old.ids, new.ids))
        within = sum(a is not None and a <= one_pass for a in ats) / reps
        row: dict[str, Any] = {"reps": reps, "golden_set": one_pass}
        if null:
            row["false_called_share"] = round(sum(a is not None for a in ats) / reps, 4)
            row["false_called_share_one_pass"] = round(within, 4)
        else:
            row.update(
                median=_num(_q(values, 0.5)),
                p10=_num(_q(values, 0.1)),
                p90=_num(_q(values, 0.9)),
                detected_by_horizon=round(sum(a is not None for a in ats) / reps, 4),
                detected_in_one_pass=round(within, 4),
            )
            if unpaired and name in unpaired:
                u = unpaired[name]["median"]
                row["unpaired_median"] = u
                row["fewer_than_unpaired"] = (
                    row["median"] is not None and u is not None and row["median"] < u
                )
        out[name] = row
        _progress(f"paired {name}: {json.dumps(row)}")
    return out


# -- cost ---------------------------------------------------------------------------------
def _time_per_event(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return (time.perf_counter() - t0) / n * 1e6


def section_cost(data: Data, args: argparse.Namespace) -> dict[str, Any]:
    old, new = data.side_pair("gpt4_0314", "gpt4_0613")
    names = data.names
    rng = _rng(args.seed, "cost")
    snapshot = profile_of(data, old, old.ids)
    n_events = 16_000
    old_ids = _draws(rng, old.ids, 2 * n_events, None)
    new_ids = _draws(rng, new.ids, n_events, None)
    coins = (rng.random(n_events) < 0.5).tolist()
    stream_none = [(old.events[i], old.features[i]) for i in old_ids[n_events:]]
    stream_open = [
        (new.events[j], new.features[j]) if c else (old.events[i], old.features[i])
        for c, i, j in zip(coins, old_ids[:n_events], new_ids, strict=True)
    ]
    warm = [(old.events[i], old.features[i]) for i in old_ids[:N_REF]]

    def profile(endpoint: str, model: str) -> tuple[int, dict[str, Any]]:
        return snapshot

    def feature_names(endpoint: str) -> tuple[str, ...]:
        return names

    def tracker_pass(stream: list[tuple[Event, dict[str, float]]]) -> Callable[[], int]:
        tracker = TransitionTracker(BASE)
        for e, f in warm:
            tracker.observe(e, f, None, profile, feature_names)

        def go() -> int:
            observe = tracker.observe
            for e, f in stream:
                observe(e, f, None, profile, feature_names)
            return len(stream)

        return go

    tracker_us: dict[str, list[float]] = {"none_open": [], "one_open": []}
    for _ in range(args.cost_repeats):
        tracker_us["none_open"].append(_time_per_event(tracker_pass(stream_none)))
        tracker_us["one_open"].append(_time_per_event(tracker_pass(stream_open)))
    _progress(f"cost tracker: {tracker_us}")

    # Whole pipeline: native records, a warm-up of the old model (detectors learn their
    # reference; the tracker counts versions), then a timed old-only block (none open)
    # and a timed 50/50 block (one open, from its first new event).
    def record(e: Event) -> bytes:
        return json.dumps(
            {
                "endpoint": e.endpoint,
                "model": e.model,
                "output": e.output,
                "input": e.input,
                "id": e.id,
                "attributes": e.attributes,
            }
        ).encode()

    p_warm = [record(e) for e, _ in warm]
    p_none = [record(e) for e, _ in stream_none[:8000]]
    p_open = [record(e) for e, _ in stream_open[:8000]]
    settings = Settings()
    configs = {
        "enabled": pipeline_config(settings),
        "disabled": _disabled(pipeline_config(settings)),
    }
    pipe_us: dict[str, dict[str, list[float]]] = {
        k: {"none_open": [], "one_open": []} for k in configs
    }
    for _ in range(args.cost_repeats):
        for cname, cfg in configs.items():
            pipeline = Pipeline(cfg)
            for k, raw in enumerate(p_warm):
                pipeline.process(raw, k)
            for block, records in (("none_open", p_none), ("one_open", p_open)):

                def go(records: list[bytes] = records, pipeline: Pipeline = pipeline) -> int:
                    process = pipeline.process
                    for k, raw in enumerate(records):
                        process(raw, k)
                    return len(records)

                pipe_us[cname][block].append(_time_per_event(go))
    _progress(f"cost pipeline: {pipe_us}")

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 3)

    tracker_med = {k: med(v) for k, v in tracker_us.items()}
    pipe_med = {c: {b: med(v) for b, v in d.items()} for c, d in pipe_us.items()}
    return {
        "repeats": args.cost_repeats,
        "events_per_pass": {"tracker": n_events, "pipeline": 8000},
        "tracker_observe_us": {
            "median": tracker_med,
            "runs": {k: [round(x, 3) for x in v] for k, v in tracker_us.items()},
            "per_open_transition_us": round(tracker_med["one_open"] - tracker_med["none_open"], 3),
        },
        "pipeline_process_us": {
            "median": pipe_med,
            "runs": {
                c: {b: [round(x, 2) for x in v] for b, v in d.items()} for c, d in pipe_us.items()
            },
            "transitions_cost_none_open_us": round(
                pipe_med["enabled"]["none_open"] - pipe_med["disabled"]["none_open"], 3
            ),
            "transitions_cost_one_open_us": round(
                pipe_med["enabled"]["one_open"] - pipe_med["disabled"]["one_open"], 3
            ),
        },
    }


def _disabled(cfg: PipelineConfig) -> PipelineConfig:
    return replace(cfg, transitions=TransitionConfig(enabled=False))


# -- main ---------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=100, help="replications per upgrade pair")
    ap.add_argument("--horizon", type=int, default=4000, help="new-version events per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument(
        "--input-alpha",
        type=float,
        default=None,
        help="level of the prompt-mix check (default: TransitionConfig's)",
    )
    ap.add_argument("--cost-repeats", type=int, default=5, help="interleaved cost repeats")
    args = ap.parse_args()
    global BASE
    if args.input_alpha is not None:
        BASE = replace(BASE, input_alpha=args.input_alpha)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")

    started = time.perf_counter()
    data = Data(FeatureExtractor(feature_config(Settings())))
    out: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/transitions.py", *sys.argv[1:]]),
        "reps": args.reps,
        "horizon": args.horizon,
        "seed": args.seed,
        "features": list(data.names),
        "config": {
            k: getattr(TransitionConfig(), k)
            for k in ("alpha", "equivalence_sd", "equivalence_points", "min_events", "t_opt")
        },
    }
    if "concurrent" in only:
        out["concurrent"] = section_concurrent(data, args)
    if "snapshot" in only:
        out["snapshot"] = section_snapshot(data, args)
    if "prompt_mix" in only:
        out["prompt_mix"] = section_prompt_mix(data, args)
    if "paired" in only:
        unpaired = out.get("concurrent", {}).get("upgrades")
        out["paired"] = section_paired(data, args, unpaired)
    if "cost" in only:
        out["cost"] = section_cost(data, args)
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
