"""Input drift vs model drift on real answers (../shared/data/llm_outputs/alpaca_eval, issue 16).

Same-model streams whose prompt mix changes at event 3000 of 6000: no model change, so a
detection of kind ``drift`` is a false page; one of kind ``input_drift`` is the right label.
AlpacaEval prompts carry their source (``dataset``): helpful_base, koala and vicuna ("hkv")
against selfinstruct and oasst ("so").

* ``reweight_to_hkv`` / ``reweight_to_so``: 20 % / 80 % of the two groups, then 80 % / 20 %.
* ``new_types_hkv_to_so`` / ``new_types_so_to_hkv``: only one group, then only the other
  (prompt types never seen in the reference).
* ``control``: all prompts, the same way before and after.
* ``upgrade`` (a check that real changes stay ``drift``): the model changes at 3000, same mix.

Every event goes through the real pipeline (``Pipeline.process`` of a JSON event with
``input`` = the instruction). A run is ``model`` when any detection is of kind ``drift``,
``input`` when there are detections and all are ``input_drift``, ``silent`` otherwise.
The same streams are also run with attribution off (``baseline_paged``). Then the cost:
``Pipeline.process`` µs/event with attribution on and off, interleaved in chunks of one
run, and the input model's pickled size per key. Prints JSON.

    python benchmarks/prompt_mix.py [--seeds 20] [--quick] [--cost-only]
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import sys
from pathlib import Path
from typing import Any

from driftmon.config import pipeline_config
from driftmon.core.inputs import InputModel
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_outputs" / "alpaca_eval"
MODELS = [
    "gpt4_0314",
    "gpt-3.5-turbo-0301",
    "claude-2",
    "gpt-4-turbo-2024-04-09",
    "Meta-Llama-3-70B-Instruct",
    "gemini-pro",
    "llama-2-70b-chat-hf",
]
UPGRADES = [
    ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0613"),
    ("text_davinci_003", "gpt-3.5-turbo-0301"),
    ("gpt4_0314", "gpt4_0613"),
    ("llama-2-70b-chat-hf", "Meta-Llama-3-70B-Instruct"),
]
HKV = frozenset({"helpful_base", "koala", "vicuna"})
PER_SIDE = 3000
# (share of hkv prompts before the switch, after it)
SCENARIOS: dict[str, tuple[float, float]] = {
    "reweight_to_hkv": (0.2, 0.8),
    "reweight_to_so": (0.8, 0.2),
    "new_types_hkv_to_so": (1.0, 0.0),
    "new_types_so_to_hkv": (0.0, 1.0),
    "control": (-1.0, -1.0),  # every prompt alike
}


def load(model: str, data_dir: Path) -> dict[int, tuple[str, str, str]]:
    """instruction id → (instruction, output, dataset)."""
    out = {}
    with open(data_dir / f"{model}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if isinstance(row.get("output"), str):
                out[int(row["instruction_id"])] = (
                    row["instruction"],
                    row["output"],
                    row["dataset"],
                )
    return out


def _pick(rng: random.Random, hkv: list[int], so: list[int], share: float) -> int:
    if share < 0:
        return rng.choice(hkv + so)
    return rng.choice(hkv if rng.random() < share else so)


def stream(
    a: dict[int, tuple[str, str, str]],
    b: dict[int, tuple[str, str, str]],
    shares: tuple[float, float],
    seed: int,
) -> list[str]:
    ids = sorted(set(a) & set(b))
    hkv = [i for i in ids if a[i][2] in HKV]
    so = [i for i in ids if a[i][2] not in HKV]
    rng = random.Random(seed)
    lines = []
    for index in range(2 * PER_SIDE):
        after = index >= PER_SIDE
        pid = _pick(rng, hkv, so, shares[1] if after else shares[0])
        prompt, output, _ = (b if after else a)[pid]
        event = {"endpoint": "assistant", "model": "production", "input": prompt, "output": output}
        lines.append(json.dumps(event))
    return lines


def run(lines: list[str], settings: Settings) -> dict[str, Any]:
    pipeline = Pipeline(pipeline_config(settings))
    found = []
    for index, line in enumerate(lines):
        found.extend(pipeline.process(line, index).detections)
    kinds = {d.kind for d in found}
    verdict = "model" if "drift" in kinds else "input" if found else "silent"
    state = pipeline.monitor.get("assistant", "production")
    inputs = state.inputs if state is not None else None
    first_after = min((d.event_index for d in found if d.event_index >= PER_SIDE), default=None)
    first = next((d for d in found if d.event_index == first_after), None)
    return {
        "verdict": verdict,
        "detections": len(found),
        "drift_before_switch": sum(d.kind == "drift" and d.event_index < PER_SIDE for d in found),
        "first_after_switch_kind": None if first is None else first.kind,
        "first_after_switch_delay": None if first_after is None else first_after - PER_SIDE,
        "input_alarms": 0 if inputs is None else inputs.alarms,
        # the last input alarm, events after the switch (the key's event count is index + 1)
        "last_input_alarm_after_switch": None
        if inputs is None or inputs.last_alarm is None
        else inputs.last_alarm - 1 - PER_SIDE,
        "watched": [] if inputs is None else list(inputs.watched),
        "r2": {} if inputs is None else {k: round(v, 3) for k, v in inputs.r2.items()},
        "input_errors": dict(pipeline.monitor.input_errors),
    }


def scenario_rows(seeds: int, data_dir: Path, settings: Settings, off: Settings) -> list[Any]:
    cache: dict[str, dict[int, tuple[str, str, str]]] = {}

    def get(name: str) -> dict[int, tuple[str, str, str]]:
        if name not in cache:
            cache[name] = load(name, data_dir)
        return cache[name]

    rows = []
    cases = [(s, m, m) for s in SCENARIOS for m in MODELS]
    cases += [("upgrade", a, b) for a, b in UPGRADES]
    for name, a_name, b_name in cases:
        shares = SCENARIOS.get(name, (-1.0, -1.0))
        runs, baseline = [], []
        for seed in range(seeds):
            lines = stream(get(a_name), get(b_name), shares, seed)
            runs.append(run(lines, settings))
            baseline.append(run(lines, off)["verdict"])
        row = {
            "scenario": name,
            "model": a_name if a_name == b_name else f"{a_name} -> {b_name}",
            "runs": seeds,
            "model_drift": sum(r["verdict"] == "model" for r in runs),
            "input_drift": sum(r["verdict"] == "input" for r in runs),
            "silent": sum(r["verdict"] == "silent" for r in runs),
            "baseline_paged": sum(v == "model" for v in baseline),
            "input_channel_fired": sum(r["input_alarms"] > 0 for r in runs),
            "details": runs,
        }
        print(json.dumps({k: v for k, v in row.items() if k != "details"}), file=sys.stderr)
        rows.append(row)
    return rows


def cost(data_dir: Path, settings: Settings, off: Settings, repeats: int) -> dict[str, Any]:
    """µs per Pipeline.process, attribution on vs off, interleaved by chunks of 200 events
    (``benchmarks/attribution_cost.py``, which also has the synthetic workload), and the
    input model's pickled size per key."""
    from attribution_cost import interleaved

    a = load("gpt4_0314", data_dir)
    lines = stream(a, a, (-1.0, -1.0), 99)
    sizes: dict[str, int] = {}

    def probe(start: int, pipelines: dict[str, Pipeline]) -> None:
        state = pipelines["on"].monitor.get("assistant", "production")
        plain = pipelines["off"].monitor.get("assistant", "production")
        assert state is not None and plain is not None
        if start == 1200:  # 1 400 events: inside the reference (1 500), the largest state
            sizes["input_model_bytes_during_reference"] = len(pickle.dumps(state.inputs))
        if start + 200 >= len(lines):
            sizes["input_model_bytes_fitted"] = len(pickle.dumps(state.inputs))
            sizes["key_state_bytes_on"] = len(pickle.dumps(state))
            sizes["key_state_bytes_off"] = len(pickle.dumps(plain))

    arms = {"off": (off, InputModel), "on": (settings, InputModel)}
    timed = interleaved(lines, arms, rounds=repeats, probe=probe)
    return {
        "events_per_run": len(lines),
        "repeats": repeats,
        "us_per_event_on": timed["us_per_event"]["on"],
        "us_per_event_off": timed["us_per_event"]["off"],
        "median_ratio_on_off": timed["ratio_on_off"]["median"],
        "ratio_on_off_range": [timed["ratio_on_off"]["min"], timed["ratio_on_off"]["max"]],
        **sizes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="3 seeds, 3 cost repeats")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cost-only", action="store_true", help="only the cost measurement")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"shared data not found at {args.data}")
    seeds = 3 if args.quick else args.seeds
    settings = Settings(embeddings={"enabled": False}, logging={"level": "warning"})
    off = Settings(
        embeddings={"enabled": False}, logging={"level": "warning"}, attribution={"enabled": False}
    )
    cost_result = cost(args.data, settings, off, 3 if args.quick else 7)
    print(json.dumps({"cost": cost_result}), file=sys.stderr)
    if args.cost_only:
        print(json.dumps({"cost": cost_result}, indent=1))
        return
    rows = scenario_rows(seeds, args.data, settings, off)
    summary: dict[str, Any] = {"seeds": seeds, "models": len(MODELS)}
    for name in [*SCENARIOS, "upgrade"]:
        mine = [r for r in rows if r["scenario"] == name]
        n = sum(r["runs"] for r in mine)
        summary[name] = {
            "runs": n,
            "model_drift_share": round(sum(r["model_drift"] for r in mine) / n, 3),
            "input_drift_share": round(sum(r["input_drift"] for r in mine) / n, 3),
            "silent_share": round(sum(r["silent"] for r in mine) / n, 3),
            "baseline_paged_share": round(sum(r["baseline_paged"] for r in mine) / n, 3),
            "input_channel_fired_share": round(sum(r["input_channel_fired"] for r in mine) / n, 3),
        }
    shifts = [r for r in rows if r["scenario"].startswith("reweight")]
    summary["targets"] = {
        "reweight_model_drift_share_le_0.05": sum(r["model_drift"] for r in shifts)
        <= 0.05 * sum(r["runs"] for r in shifts),
        "control_model_drift_share_le_0.01": summary["control"]["model_drift_share"] <= 0.01,
        "cost_ratio_le_1.15": cost_result["median_ratio_on_off"] <= 1.15,
        "input_model_bytes_le_50k": cost_result["input_model_bytes_during_reference"] <= 50_000,
    }
    print(json.dumps({"summary": summary, "cost": cost_result, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
