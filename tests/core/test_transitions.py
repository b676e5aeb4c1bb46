"""Version transitions (driftmon.core.transitions): when they open, how they compare, what
they conclude, and that bad label streams leave a clear, bounded state."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import pytest

from driftmon.config import pipeline_config
from driftmon.core.events import Event
from driftmon.core.pipeline import Pipeline
from driftmon.core.transitions import Transition, TransitionConfig, TransitionTracker
from driftmon.settings import Settings

WORDS = ["the", "model", "answers", "each", "question", "with", "a", "short", "clear", "line"]


def answer(rng: random.Random, words: int, opener: str = "", refusal: bool = False) -> str:
    if refusal:
        return "I'm sorry, but I can't help with that request."
    body = []
    while len(body) < words:
        body.extend(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        body[-1] += "."
    return opener + " ".join(body)


def event(model: str, output: str, endpoint: str = "chat", **extra: Any) -> str:
    return json.dumps({"endpoint": endpoint, "model": model, "output": output, **extra})


def pipeline(**transitions: Any) -> Pipeline:
    return Pipeline(pipeline_config(Settings(transitions=transitions)))


def feed(p: Pipeline, lines: list[str]) -> list[Transition]:
    changed: list[Transition] = []
    for i, line in enumerate(lines):
        outcome = p.process(line, i)
        assert outcome.rejection is None, outcome.rejection
        changed.extend(outcome.transitions)
    return changed


def only(p: Pipeline) -> Transition:
    assert p.transitions is not None
    found = p.transitions.transitions()
    assert len(found) == 1, [t.key for t in found]
    return found[0]


def test_a_snapshot_bump_is_reported_as_a_change_in_the_features_own_units() -> None:
    """The issue's new-user case: a new snapshot label with answers twice as long and most
    of them opening with "Certainly!" — no detector fires on a fresh key, the transition
    says what changed, by how much, in characters and percent."""
    rng = random.Random(1)
    p = pipeline()
    feed(p, [event("gpt-4o-2024-08-06", answer(rng, rng.randint(30, 60))) for _ in range(1500)])
    new = [
        event(
            "gpt-4o-2024-11-20",
            answer(rng, rng.randint(60, 120), "Certainly! " if rng.random() < 0.6 else ""),
        )
        for _ in range(400)
    ]
    changed = feed(p, new)
    t = only(p)
    assert changed and changed[0] is t
    assert (t.from_version, t.to_version, t.trigger) == (
        "gpt-4o-2024-08-06",
        "gpt-4o-2024-11-20",
        "model",
    )
    assert t.mode == "snapshot"
    assert t.verdict == "changed" and t.semver == "minor"
    assert t.new_events_at_verdict is not None and t.new_events_at_verdict <= 100
    rows = {r["feature"]: r for r in t.report()["features"]}
    chars = rows["output_chars"]
    assert chars["unit"] == "characters" and chars["verdict"] == "changed"
    assert 1.7 < chars["after"] / chars["before"] < 2.3  # about twice as long, in characters
    assert chars["ci"][0] > 0 and chars["ci"][0] <= chars["delta"] <= chars["ci"][1]
    preamble = rows["preamble"]
    assert preamble["unit"] == "%" and preamble["before"] == 0.0
    assert 50 < preamble["after"] < 70 and preamble["verdict"] == "changed"
    assert "preamble" in t.summary() and "output_chars" in t.summary()


def test_both_versions_serving_is_compared_side_by_side() -> None:
    rng = random.Random(2)
    p = pipeline()
    feed(p, [event("v1", answer(rng, rng.randint(30, 60))) for _ in range(600)])
    mixed = []
    for _ in range(1200):
        if rng.random() < 0.5:
            mixed.append(event("v1", answer(rng, rng.randint(30, 60))))
        else:
            mixed.append(event("v2", answer(rng, rng.randint(45, 90))))
    feed(p, mixed)
    t = only(p)
    assert t.mode == "concurrent"
    assert t.paired_events >= 0.8 * t.new_events  # the rest waited for a partner
    assert t.verdict == "changed"
    report = t.report()
    assert report["old_events"] > 600 and report["paired_events"] == t.paired_events


def test_an_unchanged_model_is_not_called_changed_in_seeded_reruns() -> None:
    """A/A: the same behaviour under a new label, 40 seeded runs read at every update:
    no false verdict (the sequences' guarantee is 1 % over all features at all times)."""
    false = 0
    for seed in range(40):
        rng = random.Random(seed)
        tracker = TransitionTracker(TransitionConfig())
        names = ("output_chars", "sentence_words", "refusal", "preamble", "markdown_bold")
        profile_n = 800
        draws = [_features(rng) for _ in range(profile_n)]
        profile = (
            profile_n,
            {
                f: (float(profile_n), sum(d[f] for d in draws), sum(d[f] ** 2 for d in draws))
                for f in names
            },
        )
        old, new = Event("completion", "e", "A"), Event("completion", "e", "B")

        def snapshot(endpoint: str, model: str, p: Any = profile) -> Any:
            return p

        def features(endpoint: str, n: tuple[str, ...] = names) -> tuple[str, ...]:
            return n

        for d in draws[:100]:
            tracker.observe(old, d, None, snapshot, features)
        for _ in range(1500):
            ev = new if rng.random() < 0.5 else old
            for t in tracker.observe(ev, _features(rng), None, snapshot, features):
                false += t.verdict in ("changed", "breaking")
    assert false == 0


def _features(rng: random.Random) -> dict[str, float]:
    return {
        "output_chars": rng.gauss(6.5, 0.7),
        "sentence_words": rng.gauss(16.0, 5.0),
        "refusal": float(rng.random() < 0.01),
        "preamble": float(rng.random() < 0.3),
        "markdown_bold": float(rng.random() < 0.05),
    }


def test_more_refusals_break_the_guard_major_version() -> None:
    rng = random.Random(3)
    p = pipeline()
    feed(p, [event("v1", answer(rng, rng.randint(30, 60))) for _ in range(1000)])
    feed(p, [event("v2", answer(rng, 40, refusal=rng.random() < 0.3)) for _ in range(300)])
    t = only(p)
    rows = {r["feature"]: r for r in t.features()}
    assert rows["refusal"]["verdict"] == "breaking"
    assert rows["refusal"]["ci"][0] > 2.0  # percentage points: beyond the 2-point guard
    assert t.verdict == "breaking" and t.semver == "major"


def test_a_new_behaviour_from_zero_is_caught_by_the_exact_rate_sequence() -> None:
    rng = random.Random(4)
    p = pipeline()
    feed(p, [event("v1", answer(rng, rng.randint(30, 60))) for _ in range(1000)])
    fenced = [
        event(
            "v2", ("```\n" + answer(rng, 40) + "\n```") if rng.random() < 0.35 else answer(rng, 40)
        )
        for _ in range(200)
    ]
    feed(p, fenced)
    row = next(r for r in only(p).features() if r["feature"] == "code_fence")
    assert row["verdict"] == "changed"
    assert row["verdict_at"] is not None and row["verdict_at"] <= 64


def test_a_different_prompt_mix_is_flagged_confounded_not_changed() -> None:
    """The new version gets the long prompts (a canary on a segment) and answers longer
    because its prompts are longer: the outputs differ, the model did not change."""
    rng = random.Random(5)
    p = pipeline()

    def same_model(model: str, long_prompt: bool) -> str:
        words = rng.randint(80, 120) if long_prompt else rng.randint(20, 40)
        prompt = "x" * (600 if long_prompt else 60)
        return event(
            model, answer(rng, words), input=prompt, attributes={"segment": str(long_prompt)}
        )

    feed(p, [same_model("v1", rng.random() < 0.5) for _ in range(1500)])
    feed(p, [same_model("v2", True) for _ in range(600)])
    t = only(p)
    assert t.confounded
    assert t.verdict == "pending" and t.semver is None
    inputs = {r["feature"]: r for r in t.report()["input"]}
    assert inputs["input_chars"]["verdict"] == "changed"
    # The outputs do differ: shown per feature, not claimed as a model change.
    assert any(r["verdict"] == "changed" for r in t.features())


def test_stratifying_on_the_routing_attribute_compares_like_with_like() -> None:
    rng = random.Random(6)
    p = pipeline(stratify_by=["segment"])

    def same_model(model: str, long_prompt: bool) -> str:
        words = rng.randint(80, 120) if long_prompt else rng.randint(20, 40)
        return event(
            model,
            answer(rng, words),
            input="x" * (600 if long_prompt else 60),
            attributes={"segment": "long" if long_prompt else "short"},
        )

    feed(p, [same_model("v1", rng.random() < 0.5) for _ in range(800)])
    lines = []
    for _ in range(3000):  # canary: v2 serves only the long segment, v1 both
        if rng.random() < 0.3:
            lines.append(same_model("v2", True))
        else:
            lines.append(same_model("v1", rng.random() < 0.5))
    feed(p, lines)
    t = only(p)
    assert t.mode == "concurrent"
    assert not t.confounded
    assert t.verdict in ("pending", "unchanged")
    assert all(r["verdict"] != "changed" for r in t.features())


def test_a_restart_between_the_versions_keeps_the_baseline() -> None:
    rng = random.Random(7)
    before = pipeline()
    feed(before, [event("v1", answer(rng, rng.randint(30, 60))) for _ in range(1000)])
    saved = before.monitor.snapshot()
    after = pipeline()
    after.monitor.restore(saved)
    feed(after, [event("v2", answer(rng, rng.randint(90, 150))) for _ in range(200)])
    t = only(after)
    assert (t.from_version, t.to_version) == ("v1", "v2")
    assert t.old_events_before == 1000
    assert t.verdict == "changed"
    # And the open transition itself survives a checkpoint.
    again = pipeline()
    again.monitor.restore(after.monitor.snapshot())
    assert only(again).new_events == 200
    pickle.loads(pickle.dumps(again.transitions))  # picklable after use


def test_a_provider_side_version_under_one_label_is_a_transition() -> None:
    rng = random.Random(8)
    p = pipeline()
    fp = {"attributes": {"system_fingerprint": "fp_1"}}
    feed(p, [event("gpt-4o", answer(rng, 40), **fp) for _ in range(300)])
    feed(p, [event("gpt-4o", answer(rng, 40), attributes={"system_fingerprint": "fp_2"})])
    t = only(p)
    assert (t.from_version, t.to_version, t.trigger) == (
        "gpt-4o@fp_1",
        "gpt-4o@fp_2",
        "version_attribute",
    )


def test_the_alias_picks_the_version_it_used_to_resolve_to() -> None:
    """Two aliases on one endpoint; the busier one keeps its model. When the quieter alias
    resolves to a new snapshot, the transition is from that alias's previous model."""
    rng = random.Random(9)
    p = pipeline()
    lines = []
    for _ in range(1000):
        if rng.random() < 0.8:
            lines.append(event("mini-1", answer(rng, 30), requested_model="mini"))
        else:
            lines.append(event("big-1", answer(rng, 60), requested_model="big"))
    feed(p, lines)
    feed(p, [event("big-2", answer(rng, 60), requested_model="big")])
    t = only(p)
    assert (t.from_version, t.to_version, t.trigger) == ("big-1", "big-2", "alias")


def test_bad_label_streams_leave_a_clear_bounded_state() -> None:
    rng = random.Random(10)
    p = pipeline()
    tracker = p.transitions
    assert tracker is not None
    # An endpoint's first model: nothing to compare with.
    feed(p, [event("a", answer(rng, 30)) for _ in range(5)])
    assert tracker.transitions() == []
    # A model seen for one event whose predecessor has too few events: refused, counted.
    feed(p, [event("b", answer(rng, 30))])
    assert tracker.refused["no_baseline"] == 1
    # Flapping labels open at most one transition per new label.
    feed(p, [event("a" if i % 2 else "b", answer(rng, 30)) for i in range(400)])
    feed(p, [event("c", answer(rng, 30))])
    feed(p, [event("a" if i % 2 else "c", answer(rng, 30)) for i in range(200)])
    assert len(tracker.transitions()) == 1
    # Thousands of distinct labels: capped, counted, memory bounded.
    capped = pipeline()
    capped_tracker = capped.transitions
    assert capped_tracker is not None
    feed(capped, [event("base", answer(rng, 30)) for _ in range(100)])
    capped_tracker.config = TransitionConfig(max_transitions=50)
    for i in range(3000):
        capped.process(event(f"m{i}", answer(rng, 30)), i)
        capped.process(event("base", answer(rng, 30)), i)
    assert len(capped_tracker.open_transitions()) <= 50
    assert capped_tracker.refused["limit"] > 2000
    lineage = capped_tracker._lineages["chat"]
    assert len(lineage.versions) <= capped_tracker.config.max_versions


def test_paired_answers_to_the_same_prompts_need_fewer_events() -> None:
    """``driftmon compare`` on a golden set: the same prompts answered by both versions."""
    rng = random.Random(11)
    prompts = [rng.randint(20, 140) for _ in range(2000)]  # prompt-driven answer lengths

    def run(paired: bool) -> int | None:
        t = _transition()
        for i, words in enumerate(prompts):
            other = words if paired else prompts[rng.randrange(len(prompts))]
            old = {"output_chars": _log_chars(other)}
            new = {"output_chars": _log_chars(words) + 0.08}
            e_old, e_new = Event("completion", "e", "A"), Event("completion", "e", "B")
            t.observe_pair(e_old, old, e_new, new)
            if i % 8 == 7:
                t.update()
                if t.verdict == "changed":
                    return t.new_events
        return None

    paired, unpaired = run(True), run(False)
    assert paired is not None
    assert unpaired is None or paired < unpaired / 3


def _log_chars(words: int) -> float:
    import math

    return math.log1p(words * 5.5)


def _transition() -> Transition:
    return Transition(
        1,
        "e",
        "A",
        "B",
        "model",
        None,
        ("output_chars",),
        (1000, {"output_chars": (1000.0, 1000 * 6.0, 1000 * (36.0 + 0.5))}),
        None,
        TransitionConfig(),
        None,
        (),
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_transitions_can_be_switched_off(enabled: bool) -> None:
    rng = random.Random(12)
    p = pipeline(enabled=enabled)
    feed(p, [event("v1", answer(rng, 40)) for _ in range(100)])
    feed(p, [event("v2", answer(rng, 40)) for _ in range(10)])
    assert (p.transitions is not None) is enabled


def test_feedback_arriving_before_a_versions_first_answer_does_not_hide_it() -> None:
    rng = random.Random(13)
    p = pipeline()
    feed(p, [event("v1", answer(rng, 40)) for _ in range(100)])
    early = json.dumps({"kind": "feedback", "endpoint": "chat", "model": "v2", "value": 1})
    feed(p, [early, event("v2", answer(rng, 40))])
    t = only(p)
    assert (t.from_version, t.to_version) == ("v1", "v2")


def test_features_an_endpoint_never_reports_do_not_hold_back_unchanged() -> None:
    """No latency and no feedback in the events: the model that did not change still
    gets `unchanged` (patch) once the features it does report are shown unchanged."""
    rng = random.Random(14)
    names = ("output_chars", "latency", "feedback")
    t = Transition(
        1,
        "e",
        "A",
        "B",
        "model",
        None,
        names,
        (5000, {"output_chars": (5000.0, 5000 * 5.0, 5000 * 26.0)}),
        None,
        TransitionConfig(),
        None,
        (),
    )
    new = Event("completion", "e", "B")
    for _ in range(20_000):
        t.observe(True, new, {"output_chars": rng.gauss(5.0, 1.0)})
        if t.due():
            t.update()
        if t.closed:
            break
    assert (t.verdict, t.semver, t.closed) == ("unchanged", "patch", True)
    rows = {r["feature"]: r for r in t.features()}
    assert rows["latency"]["n"] == 0 and rows["latency"]["verdict"] == "collecting"
