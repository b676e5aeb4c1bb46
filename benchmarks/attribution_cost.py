"""What attribution (issue 16) costs per event: ``Pipeline.process`` with it on vs off.

Issue 16's "Cost" line: throughput within 15 % of attribution off, interleaved A/B. Each
round runs the whole stream through a fresh pipeline per arm, the arms taking turns every
``--chunk`` events (the order rotating), so the shared machine's slow moments fall on all
arms alike; the ratio on/off is per round, reported as median and range over rounds.

Workloads:

* ``alpaca``: AlpacaEval answers of gpt4_0314 (../shared/data/llm_outputs/alpaca_eval)
  with their instruction as ``input``, 6 000 events of one key (the stream of
  ``benchmarks/prompt_mix.py``'s cost: 805 prompts drawn with replacement; nothing is
  cached by prompt, so the repeats do not make it cheaper);
* ``synthetic``: ``driftmon.demo.synthetic``, 100 keys, ``--synthetic-events`` (200 000:
  ~1 900 answers a key, so most keys are fitted before the end); events carry
  ``input_tokens`` and ``prompt_version``, no ``input`` text.

``--baseline REV`` adds an arm ``baseline``: attribution on, with the ``InputModel`` of
``git show REV:driftmon/core/inputs.py`` (loaded as plain Python), so the before and after
are measured side by side in one run; ``--agreement-seeds N`` then also checks that both
give the same detections, kinds and input alarms on ``prompt_mix.py``'s streams.

Then a breakdown (``InputModel`` alone, no pipeline, on the events the pipeline feeds it):
µs per event in the prompt features, in the rest of ``observe`` (buffering), in the rest
of ``flush`` (reference statistics, CUSUMs, version rule) and in ``_fit``. Prints JSON.

    python benchmarks/attribution_cost.py [--rounds 5] [--workloads alpaca,synthetic]
        [--baseline HEAD [--agreement-seeds 2]]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from driftmon.config import pipeline_config
from driftmon.core import inputs, monitor
from driftmon.core.pipeline import Pipeline
from driftmon.demo.synthetic import generate
from driftmon.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "llm_outputs" / "alpaca_eval"
SYNTHETIC_KEYS = 100


def settings(enabled: bool) -> Settings:
    return Settings(
        embeddings={"enabled": False},
        logging={"level": "warning"},
        attribution={"enabled": enabled},
    )


def alpaca_lines(data_dir: Path) -> list[str]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prompt_mix import load, stream

    answers = load("gpt4_0314", data_dir)
    return stream(answers, answers, (-1.0, -1.0), 99)


def synthetic_lines(n_events: int) -> list[str]:
    return list(generate(n_events, n_keys=SYNTHETIC_KEYS, seed=0))


def load_revision(rev: str) -> ModuleType:
    """driftmon/core/inputs.py at git revision ``rev``, imported as plain Python."""
    source = subprocess.run(
        ["git", "show", f"{rev}:driftmon/core/inputs.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "inputs_baseline.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("inputs_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@contextmanager
def input_model_class(cls: type[Any]) -> Iterator[None]:
    """New keys' input models are of class ``cls`` (the monitor makes them)."""
    before = monitor.InputModel
    monitor.InputModel = cls  # type: ignore[misc]
    try:
        yield
    finally:
        monitor.InputModel = before  # type: ignore[misc]


def interleaved(
    lines: list[str],
    arms: dict[str, tuple[Settings, type[Any]]],
    *,
    rounds: int,
    chunk: int = 200,
    probe: Callable[[int, dict[str, Pipeline]], None] | None = None,
) -> dict[str, Any]:
    """µs per ``Pipeline.process`` per arm, the arms taking turns every ``chunk`` events;
    ``probe(start, pipelines)`` is called after each chunk (not timed)."""
    warm = Pipeline(pipeline_config(next(iter(arms.values()))[0]))
    for index, line in enumerate(lines):  # the detectors' calibration caches, every arm
        warm.process(line, index)
    names = list(arms)
    us: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(rounds):
        pipelines = {name: Pipeline(pipeline_config(arms[name][0])) for name in names}
        spent = dict.fromkeys(names, 0.0)
        for c, start in enumerate(range(0, len(lines), chunk)):
            turn = (c + rnd) % len(names)
            for name in names[turn:] + names[:turn]:
                pipeline, end = pipelines[name], min(start + chunk, len(lines))
                with input_model_class(arms[name][1]):
                    t0 = time.perf_counter()
                    for index in range(start, end):
                        pipeline.process(lines[index], index)
                    spent[name] += time.perf_counter() - t0
            if probe is not None:
                probe(start, pipelines)
        for name in names:
            us[name].append(spent[name] / len(lines) * 1e6)
    out: dict[str, Any] = {"events": len(lines), "rounds": rounds, "chunk": chunk}
    out["us_per_event"] = {name: [round(v, 1) for v in us[name]] for name in names}
    for name in names:
        if name == "off":
            continue
        ratios = [a / b for a, b in zip(us[name], us["off"], strict=True)]
        out[f"ratio_{name}_off"] = {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        }
    return out


def fed_events(lines: list[str]) -> list[tuple[str, inputs.Prompt, dict[str, float], int]]:
    """What the pipeline hands the key's input models: (key, prompt, features, event)."""
    fed: list[tuple[str, inputs.Prompt, dict[str, float], int]] = []
    pipeline = Pipeline(pipeline_config(settings(True)))
    update = pipeline.monitor.update

    def spy(endpoint: str, model: str, features: dict[str, float], *a: Any, **kw: Any) -> Any:
        detections = update(endpoint, model, features, *a, **kw)
        state = pipeline.monitor.get(endpoint, model)
        if kw.get("prompt") is not None and state is not None:
            fed.append((f"{endpoint}/{model}", kw["prompt"], dict(features), state.events))
        return detections

    pipeline.monitor.update = spy  # type: ignore[method-assign]
    for index, line in enumerate(lines):
        pipeline.process(line, index)
    return fed


def _feed(fed: list[tuple[str, inputs.Prompt, dict[str, float], int]]) -> float:
    """Feed the events to fresh input models (one per key); the seconds it took."""
    models: dict[str, inputs.InputModel] = {}
    t0 = time.perf_counter()
    for key, prompt, features, event in fed:
        model = models.get(key)
        if model is None:
            model = models[key] = inputs.InputModel(inputs.AttributionConfig())
        model.observe(prompt, features, event)
    return time.perf_counter() - t0


def breakdown(lines: list[str], repeats: int = 3) -> dict[str, float]:
    """µs per event of the stream in the parts of ``InputModel``, alone (no pipeline, so
    with warmer caches than in it): ``flush``, ``_fit`` and the prompt features
    (``_block``) timed by wrappers (called once per block: they cost little); ``observe``
    without ``flush`` is the rest. The best of ``repeats`` passes."""
    fed = fed_events(lines)
    cls = inputs.InputModel
    targets: dict[str, tuple[Any, str]] = {
        "flush": (cls, "flush"),
        "fit": (cls, "_fit"),
        "features": (inputs, "_block"),
    }
    originals = {key: getattr(owner, name) for key, (owner, name) in targets.items()}
    best: dict[str, float] = {}
    fits = 0
    for _ in range(repeats):
        spent = dict.fromkeys(targets, 0.0)
        calls = dict.fromkeys(targets, 0)

        def timed(key: str) -> Callable[..., Any]:
            method = originals[key]

            def wrapper(*args: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return method(*args)
                finally:
                    spent[key] += time.perf_counter() - t0  # noqa: B023
                    calls[key] += 1  # noqa: B023

            return wrapper

        try:
            for key, (owner, name) in targets.items():
                setattr(owner, name, timed(key))
            total = _feed(fed)
        finally:
            for key, (owner, name) in targets.items():
                setattr(owner, name, originals[key])
        if not best or total < best["total"]:
            best, fits = {"total": total, **spent}, calls["fit"]
    per = 1e6 / len(lines)
    return {
        "input_model_total": round(best["total"] * per, 2),
        "prompt_features": round(best["features"] * per, 2),
        "observe_without_flush": round((best["total"] - best["flush"]) * per, 2),
        "flush_without_features_and_fit": round(
            (best["flush"] - best["fit"] - best["features"]) * per, 2
        ),
        "fit": round(best["fit"] * per, 2),
        "fits": fits,
        "us_per_fit": round(best["fit"] / max(fits, 1) * 1e6, 1),
    }


def agreement(baseline: type[Any], data_dir: Path, seeds: int) -> dict[str, Any]:
    """The same AlpacaEval streams as ``benchmarks/prompt_mix.py`` (3 models, every
    scenario, ``seeds`` each) through the pipeline with this ``InputModel`` and with
    ``baseline``: runs whose detections (event, feature, kind), input alarms and watched
    features are identical."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prompt_mix import MODELS, SCENARIOS, load, stream

    identical, different = 0, []
    for model in MODELS[:3]:
        answers = load(model, data_dir)
        for name, shares in SCENARIOS.items():
            for seed in range(seeds):
                lines = stream(answers, answers, shares, seed)
                seen = []
                for cls in (inputs.InputModel, baseline):
                    with input_model_class(cls):
                        pipeline = Pipeline(pipeline_config(settings(True)))
                        found = [
                            (d.event_index, d.feature, d.kind)
                            for index, line in enumerate(lines)
                            for d in pipeline.process(line, index).detections
                        ]
                    state = pipeline.monitor.get("assistant", "production")
                    assert state is not None and state.inputs is not None
                    model_state = state.inputs
                    seen.append(
                        (found, model_state.alarms, model_state.last_alarm, model_state.watched)
                    )
                if seen[0] == seen[1]:
                    identical += 1
                else:
                    different.append(f"{model}/{name}/{seed}")
    return {"runs": identical + len(different), "identical": identical, "different": different}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--workloads", default="alpaca,synthetic")
    ap.add_argument("--synthetic-events", type=int, default=200_000)
    ap.add_argument("--baseline", metavar="REV", help="also an arm with inputs.py at REV")
    ap.add_argument(
        "--agreement-seeds",
        type=int,
        default=0,
        help="with --baseline: compare the detections on prompt_mix streams, N seeds each",
    )
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    arms: dict[str, tuple[Settings, type[Any]]] = {
        "off": (settings(False), inputs.InputModel),
        "on": (settings(True), inputs.InputModel),
    }
    baseline = load_revision(args.baseline).InputModel if args.baseline else None
    if baseline is not None:
        arms["baseline"] = (settings(True), baseline)
    from driftmon.core import compiled_modules

    result: dict[str, Any] = {
        "compiled": compiled_modules(),
        "inputs_module": Path(inputs.__file__ or "").name,
    }
    for workload in args.workloads.split(","):
        if workload == "alpaca":
            if not args.data.is_dir():
                sys.exit(f"shared data not found at {args.data}")
            lines = alpaca_lines(args.data)
        elif workload == "synthetic":
            lines = synthetic_lines(args.synthetic_events)
        else:
            sys.exit(f"unknown workload {workload!r}")
        row = interleaved(lines, arms, rounds=args.rounds, chunk=args.chunk)
        us = row["us_per_event"]
        row["on_minus_off_us_per_event"] = round(
            statistics.median(us["on"]) - statistics.median(us["off"]), 2
        )
        row["breakdown_us_per_event"] = breakdown(lines)
        print(json.dumps({workload: row}), file=sys.stderr)
        result[workload] = row
    if baseline is not None and args.agreement_seeds:
        result["agreement_with_baseline"] = agreement(baseline, args.data, args.agreement_seeds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
