"""Input drift vs model drift (driftmon.core.inputs, issue 16): the per-key input model and
the labelling of detections, through the real pipeline on streams generated here."""

from __future__ import annotations

import importlib.util
import json
import pickle
import random
import sys
from array import array
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from driftmon.config import pipeline_config
from driftmon.core import inputs
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


def _plain_inputs() -> ModuleType:
    """driftmon/core/inputs.py imported as plain Python, even where the extension is built."""
    path = Path(inputs.__file__ or "").with_name("inputs.py")
    spec = importlib.util.spec_from_file_location("driftmon_core_inputs_plain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _varied_prompts() -> tuple[list[str | None], list[int | None]]:
    """Prompts that stress the byte scan: unicode, NUL, surrogates, no text, long heads,
    the 41st word (bytes.split(None, 40) keeps the rest as one piece), upper case."""
    words = " ".join(["word"] * 40)
    texts: list[str | None] = [
        None,
        "",
        " ",
        "\n\t\r\x0b\x0c",
        'What is 2+2? Answer in "one" word:',
        "WHY does my Python code fail?",
        "Écris un poème sur la mer, s'il te plaît",
        "日本語で説明してください: list the steps",
        "emoji 🙂 code `x = [1]` {json}",
        "lone surrogate \ud800 then code",
        "NUL\x00inside list\x00of words",
        f"{words} list",
        f"{words} list?",
        f"{words} list code",
        f"{words}  list",
        "summarization-of-THE-text recommendations recommendationsx",
        "x" * 10_000,
        "tips " * 200,
        "a\u00a0b\u2028c 12345 :: '' \"\" ;;; ===",
    ]
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCWHY\n\t?:;{}\"'0123é日\x00.,`$#"
    lexicon = "write list explain code python summarize translate table json who what is"
    for _ in range(400):
        parts = [rng.choice(alphabet) for _ in range(rng.randint(0, 400))]
        for _ in range(rng.randint(0, 8)):
            parts.insert(rng.randint(0, len(parts)), f" {rng.choice(lexicon.split())} ")
        texts.append("".join(parts))
    tokens = [rng.choice([None, 0, 1, 57, 10**6]) for _ in texts]
    return texts, tokens


def test_compiled_and_plain_prompt_features_are_identical() -> None:
    """The one-pass scan (the compiled path) gives bit for bit the features and folds of
    the array code that defines them, on every prompt, alone or in a block."""
    plain = _plain_inputs()
    texts, tokens = _varied_prompts()
    heads = [t[: plain.HEAD_CHARS] if t else "" for t in texts]
    lengths = [len(t) if t else 0 for t in texts]
    counts = [k or 0 for k in tokens]
    for start in range(0, len(texts), plain.BLOCK):
        block = slice(start, start + plain.BLOCK)
        expected, expected_folds = plain.prompt_block(texts[block], tokens[block])
        # the extension, when built (else the same plain module)
        x, folds = prompt_block(texts[block], tokens[block])
        assert np.array_equal(x, expected) and np.array_equal(folds, expected_folds)
        # the scan as plain Python, built or not
        scanned, sums = np.zeros_like(expected), np.empty(len(expected))
        plain._scan(scanned, heads[block], lengths[block], counts[block], sums)
        assert np.array_equal(scanned, plain._count(heads[block], lengths[block], counts[block]))
        assert np.array_equal(sums.astype(np.int64) % plain.FOLDS, expected_folds)
    for text, count in zip(texts[:40], tokens[:40], strict=True):
        assert np.array_equal(prompt_features(text, count), plain.prompt_features(text, count))


def test_compiled_and_plain_input_channels_agree() -> None:
    """The input model through the compiled path (scan, reference statistics and CUSUMs as
    loops) and through the array code: the same fit up to rounding (the statistics are
    summed in another order), the same CUSUMs, the same alarm. The loops run as plain
    Python give the compiled numbers exactly."""
    plain = _plain_inputs()
    loops = _plain_inputs()
    loops._COMPILED = True  # type: ignore[attr-defined]  # the loops, run as plain Python
    models = [
        module.InputModel(module.AttributionConfig(reference_events=640, z_clip=1.0))
        for module in (inputs, plain, loops)
    ]
    rng = random.Random(11)
    for i in range(2000):
        code = rng.random() < (0.2 if i < 1300 else 0.9)
        text = rng.choice(CODE_PROMPTS if code else FACT_PROMPTS).format(rng.choice(TOPICS))
        features = {"output_chars": rng.gauss(6.0 if code else 4.0, 0.3), "fence": float(code)}
        prompt = (text, rng.randint(5, 50) if i % 3 else None, None)
        for model in models:
            model.observe(prompt, features, i)
        if i % inputs.BLOCK == 0:
            first, *others = models
            for other in others:
                assert other.fitted == first.fitted and other.n == first.n
                assert other.statistic() == pytest.approx(first.statistic(), rel=1e-9, abs=1e-9)
                assert other.drift_since == first.drift_since
            if inputs._COMPILED:
                assert models[2].statistic() == first.statistic()
    first, *others = models
    assert first.alarms >= 1
    for other in others:
        assert other.alarms == first.alarms and other.last_alarm == first.last_alarm
        assert other.watched == first.watched
        np.testing.assert_allclose(other.coef, first.coef, rtol=1e-9, atol=1e-12)


def test_an_input_model_pickled_with_outputs_in_its_pending_events_restores() -> None:
    """A snapshot from before ``_outputs`` kept each pending event's output values in its
    entry: it restores, and goes on exactly as the model it was taken from."""
    rng = random.Random(12)

    def event(i: int) -> tuple[tuple[str, None, None], dict[str, float]]:
        code = rng.random() < (0.3 if i < 500 else 0.9)
        text = rng.choice(CODE_PROMPTS if code else FACT_PROMPTS).format(rng.choice(TOPICS))
        return (text, None, None), {"output_chars": rng.gauss(6.0 if code else 4.0, 0.3)}

    model = InputModel(AttributionConfig(reference_events=400))
    for i in range(100):
        model.observe(*event(i), i)
    assert model._pending and len(model._outputs) == len(model._pending)
    old = dict(model.__dict__)
    values = iter(model._outputs)
    old["_pending"] = [(*entry, [next(values)]) for entry in model._pending]
    del old["_outputs"]
    legacy = InputModel.__new__(InputModel)
    legacy.__dict__.update(old)
    restored = pickle.loads(pickle.dumps(legacy))
    for i in range(100, 800):
        prompt, features = event(i)
        model.observe(prompt, features, i)
        restored.observe(prompt, features, i)
    model.flush()
    restored.flush()
    assert restored.alarms == model.alarms >= 1 and restored.last_alarm == model.last_alarm
    np.testing.assert_array_equal(restored.coef, model.coef)


def test_output_values_are_packed_as_the_doubles_an_array_would_hold() -> None:
    """The unfitted model's output values go through ``_packer`` (itemgetter and struct, in
    C): the bytes ``array("d")`` would hold, for any number of targets; a missing target
    raises KeyError (the event is then not part of the reference); the packer is never
    pickled."""
    from driftmon.core.inputs import _packer

    features = {"a": 1.5, "b": -2.0, "c": 3, "d": 1e300}
    for targets in ((), ("a",), ("a", "c", "d")):
        expected = array("d", [features[n] for n in targets]).tobytes()
        assert _packer(targets)(features) == expected
    with pytest.raises(KeyError):
        _packer(("a", "missing"))(features)
    model = InputModel(AttributionConfig(reference_events=400))
    model.observe(("a prompt", None, None), {"output_chars": 5.0}, 1)
    model.observe(("a prompt", None, None), {"list_items": 1.0}, 2)  # no output_chars
    assert list(model._outputs) == [5.0] and len(model._pending) == 1
    restored = pickle.loads(pickle.dumps(model))
    assert "_packer" not in model.__getstate__() and restored._packer is None
    restored.observe(("a prompt", None, None), {"output_chars": 6.0}, 3)
    assert list(restored._outputs) == [5.0, 6.0]
