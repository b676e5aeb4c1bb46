"""Input drift vs model drift (driftmon.core.inputs, issue 16): the per-key input model and
the labelling of detections, through the real pipeline on streams generated here."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import numpy as np
import pytest

from driftmon.config import pipeline_config
from driftmon.core.inputs import (
    PROMPT_FEATURES,
    AttributionConfig,
    InputModel,
    prompt_block,
    prompt_features,
)
from driftmon.core.monitor import Monitor
from driftmon.core.pipeline import Pipeline
from driftmon.settings import Settings

CODE_PROMPTS = [
    "Write a Python function that {} and explain the code.",
    "Implement {} in JavaScript; give the code and a short test.",
]
FACT_PROMPTS = [
    "What is {}?",
    "Who first described {}?",
]
TOPICS = ["sorting a list", "the capital of Peru", "binary search", "a stack", "photosynthesis"]
SWITCH = 4000
EVENTS = 8000


def _answer(rng: random.Random, code: bool, longer: float = 1.0) -> str:
    """A code prompt gets a long fenced answer with paragraphs; a fact prompt a short one."""
    if code:
        body = " ".join(["word"] * int(rng.gauss(120, 20) * longer))
        return f"Here is the code:\n\n```python\nprint(1)\n```\n\n{body}\n\n{body[:80]}"
    return " ".join(["fact"] * max(3, int(rng.gauss(25, 6) * longer))) + "."


def _event(rng: random.Random, code: bool, *, with_input: bool = True, longer: float = 1.0) -> str:
    template = rng.choice(CODE_PROMPTS if code else FACT_PROMPTS)
    event: dict[str, Any] = {
        "endpoint": "assistant",
        "model": "m1",
        "output": _answer(rng, code, longer),
    }
    if with_input:
        event["input"] = template.format(rng.choice(TOPICS))
    return json.dumps(event)


def _stream(
    seed: int,
    code_before: float,
    code_after: float,
    *,
    with_input: bool = True,
    longer_after: float = 1.0,
) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(EVENTS):
        after = i >= SWITCH
        code = rng.random() < (code_after if after else code_before)
        out.append(_event(rng, code, with_input=with_input, longer=longer_after if after else 1.0))
    return out


def _run(lines: list[str], **attribution: Any) -> tuple[Pipeline, list[tuple[int, str, str]]]:
    settings = Settings(embeddings={"enabled": False}, attribution=attribution)
    pipeline = Pipeline(pipeline_config(settings))
    found = []
    for index, line in enumerate(lines):
        outcome = pipeline.process(line, index)
        assert outcome.rejection is None, outcome.rejection
        found.extend((d.event_index, d.feature, d.kind) for d in outcome.detections)
    return pipeline, found


def test_prompt_features_are_the_named_shape_and_lexicon_values() -> None:
    text = 'What is 2+2? Answer in "one" word:'
    named = dict(zip(PROMPT_FEATURES, prompt_features(text, 12), strict=True))
    assert named["bias"] == 1.0
    assert named["log_chars"] == pytest.approx(np.log1p(len(text)))
    assert named["log_questions"] == pytest.approx(np.log1p(1))
    assert named["log_digits"] == pytest.approx(np.log1p(2))
    assert named["wh_start"] == 1.0 and named["aux_start"] == 0.0
    assert named["lex_brevity"] == 1.0 and named["lex_code"] == 0.0
    assert named["log_input_tokens"] == pytest.approx(np.log1p(12))
    # A block gives each prompt the row it gets alone, whatever its neighbours.
    texts = ["Write code\x00 in rust", None, "", "List three tips", "é" * 400]
    rows, folds = prompt_block(texts, [None, 7, None, 3, None])
    for i, text in enumerate(texts):
        alone, fold = prompt_block([text], [[None, 7, None, 3, None][i]])
        np.testing.assert_allclose(rows[i], alone[0])
        assert folds[i] == fold[0]


def test_ridge_recovers_a_known_linear_relation() -> None:
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta"]
    model = InputModel(AttributionConfig(reference_events=1200))
    at = {name: i for i, name in enumerate(PROMPT_FEATURES)}
    for i in range(1200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 60)))
        if rng.random() < 0.3:
            text = "python code: " + text
        x = prompt_features(text, None)
        y = 2.0 + 0.5 * x[at["log_words"]] + 1.0 * x[at["lex_code"]] + rng.gauss(0, 0.1)
        model.observe((text, None, None), {"target": y}, i + 1)
    model.flush()
    assert model.fitted and model.watched == ("target",)
    assert model.r2["target"] > 0.9
    assert model.residual_sd["target"] == pytest.approx(0.1, rel=0.25)
    # The fitted prediction follows the relation on new prompts.
    probe = ["alpha " * 5, "python code: " + "beta " * 40, "gamma delta"]
    truth = [
        2.0
        + 0.5 * prompt_features(t, None)[at["log_words"]]
        + prompt_features(t, None)[at["lex_code"]]
        for t in probe
    ]
    np.testing.assert_allclose(model.predict(probe, [None] * 3)[:, 0], truth, atol=0.1)


def test_a_prompt_mix_shift_fires_the_input_channel_and_labels_detections_input_drift() -> None:
    lines = _stream(0, code_before=0.2, code_after=0.8)
    pipeline, found = _run(lines)
    after = [d for d in found if d[0] >= SWITCH]
    assert after, "the output features move: the raw detectors fire"
    assert {kind for _, _, kind in after} == {"input_drift"}
    state = pipeline.monitor.get("assistant", "m1")
    assert state is not None and state.inputs is not None
    assert state.inputs.alarms >= 1
    # Without attribution the same detections, all "drift".
    _, plain = _run(lines, enabled=False)
    assert [(i, f) for i, f, _ in plain] == [(i, f) for i, f, _ in found]
    assert {kind for _, _, kind in plain} == {"drift"}


def test_a_model_change_with_the_same_prompt_mix_stays_drift() -> None:
    lines = _stream(1, code_before=0.5, code_after=0.5, longer_after=1.8)
    pipeline, found = _run(lines)
    after = [d for d in found if d[0] >= SWITCH]
    assert after
    assert after[0][2] == "drift"
    state = pipeline.monitor.get("assistant", "m1")
    assert state is not None and state.inputs is not None and state.inputs.fitted
    assert state.inputs.alarms == 0


def test_events_without_input_behave_as_before() -> None:
    lines = _stream(2, code_before=0.2, code_after=0.8, with_input=False)
    on, found_on = _run(lines)
    _, found_off = _run(lines, enabled=False)
    assert found_on and found_on == found_off
    state = on.monitor.get("assistant", "m1")
    assert state is not None and state.inputs is None
    assert on.monitor.snapshot() != b""  # snapshots with no input model


def test_a_new_prompt_version_taking_a_share_counts_as_an_input_change() -> None:
    model = InputModel(AttributionConfig(reference_events=300))
    for i in range(300):
        model.observe((None, None, "v1"), {"output_chars": 5.0}, i)
    model.flush()
    assert model.fitted and model.watched == ()  # nothing to predict from
    for i in range(300, 400):  # 5 % of a new version: not a sizeable share
        model.observe((None, None, "v2" if i % 20 == 0 else "v1"), {}, i)
    model.flush()
    assert model.drift_since is None
    for i in range(400, 500):
        model.observe((None, None, "v2" if i % 2 else "v1"), {}, i)
    model.flush()
    assert model.drift_since is not None and 400 < model.drift_since < 440
    assert not model.fitted  # a new reference is being gathered


def _monitor(reference_events: int = 600) -> Monitor:
    settings = Settings(attribution={"reference_events": reference_events})
    return Pipeline(pipeline_config(settings)).monitor


def _feed(monitor: Monitor, rng: random.Random, n: int, code_share: float) -> list[str]:
    kinds = []
    for _ in range(n):
        code = rng.random() < code_share
        text = rng.choice(CODE_PROMPTS if code else FACT_PROMPTS).format(rng.choice(TOPICS))
        value = rng.gauss(6.0 if code else 4.0, 0.3)
        for d in monitor.update(
            "ep", "m", {"output_chars": value}, None, prompt=(text, None, None)
        ):
            kinds.append(d.kind)
    return kinds


def test_snapshot_round_trip_keeps_the_input_model() -> None:
    monitor = _monitor()
    _feed(monitor, random.Random(3), 700, 0.3)
    state = monitor.get("ep", "m")
    assert state is not None and state.inputs is not None and state.inputs.fitted
    restored = _monitor()
    restored.restore(monitor.snapshot())
    again = restored.get("ep", "m")
    assert again is not None and again.inputs is not None
    assert again.inputs.fitted and again.inputs.watched == state.inputs.watched
    np.testing.assert_array_equal(again.inputs.coef, state.inputs.coef)
    # Both go on identically: same labels, same input alarm.
    assert _feed(monitor, random.Random(4), 1500, 0.9) == _feed(
        restored, random.Random(4), 1500, 0.9
    )
    # The input channel fired, and the model was fitted again on the new mix.
    assert again.inputs.alarms == state.inputs.alarms == 1
    assert again.inputs.fitted and again.inputs.drift_since is None
    assert len(pickle.dumps(state.inputs)) < 50_000


def test_an_old_snapshot_without_input_models_still_restores() -> None:
    monitor = _monitor()
    _feed(monitor, random.Random(5), 700, 0.3)
    payload = pickle.loads(monitor.snapshot())
    for state in payload["keys"].values():
        del state.inputs  # a version-3 KeyState has no such slot
    payload["version"] = 3
    restored = _monitor()
    restored.restore(pickle.dumps(payload))
    state = restored.get("ep", "m")
    assert state is not None and state.inputs is None
    assert state.events == 700
    _feed(restored, random.Random(6), 10, 0.3)  # the key gets a new input model
    assert state.inputs is not None and state.inputs.n == 0 and len(state.inputs._pending) == 10
    payload["version"] = 2
    with pytest.raises(ValueError, match="snapshot version 2"):
        restored.restore(pickle.dumps(payload))


def test_a_failing_input_model_costs_no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: InputModel, *args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(InputModel, "observe", broken)
    lines = _stream(0, code_before=0.2, code_after=0.8)[:5000]
    pipeline, found = _run(lines)
    _, plain = _run(lines, enabled=False)
    assert found == plain and found
    assert pipeline.monitor.input_errors["RuntimeError"] == len(lines)
