"""Values shown to people are in each feature's own unit; the log scale stays internal."""

import math
import random

import pytest

from driftmon.core.detectors import DetectorConfig
from driftmon.core.monitor import Monitor, MonitorConfig
from driftmon.core.units import format_value, to_display, unit


@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ("output_chars", "characters"),
        ("output_tokens", "tokens"),
        ("latency", "ms"),
        ("list_items", "list items"),
        ("paragraphs", "paragraphs"),
        ("sentence_words", "words"),
        ("feedback", "score"),
        ("embedding_distance", "distance"),
        ("embedding", "statistic"),
        ("refusal", "%"),
        ("must_cite_source", "%"),  # a contract check: 0/1 like every other unnamed feature
    ],
)
def test_every_feature_has_a_unit(feature: str, expected: str) -> None:
    assert unit(feature) == expected


def test_to_display_undoes_the_log_scale_and_shows_rates_in_percent() -> None:
    assert to_display("output_chars", math.log1p(412)) == pytest.approx(412)
    assert to_display("paragraphs", math.log1p(1.0)) == pytest.approx(1.0)
    assert to_display("refusal", 0.125) == pytest.approx(12.5)
    assert to_display("sentence_words", 18.5) == 18.5
    assert math.isnan(to_display("output_chars", math.nan))


@pytest.mark.parametrize(
    ("feature", "value", "text"),
    [
        ("output_chars", 1030.4, "1,030 characters"),
        ("paragraphs", 2.04, "2.0 paragraphs"),
        ("latency", 812.6, "813 ms"),
        ("refusal", 12.5, "12.5 %"),
        ("sentence_words", 18.25, "18.2 words"),
        ("feedback", 0.4213, "0.421 score"),
        ("output_tokens", math.nan, "n/a"),
    ],
)
def test_format_value(feature: str, value: float, text: str) -> None:
    assert format_value(feature, value) == text


def _shifted_counts(monitor: Monitor, before: int, after: int, shift_at: int, n: int) -> list:
    """Character counts around ``before`` then ``after``, fed as the pipeline feeds them
    (log1p), with a refusal rate of 10 % then 40 %."""
    rng = random.Random(7)
    found = []
    for i in range(n):
        centre, refusals = (before, 0.1) if i < shift_at else (after, 0.4)
        chars = max(1, round(rng.lognormvariate(math.log(centre), 0.3)))
        feats = {"output_chars": math.log1p(chars), "refusal": float(rng.random() < refusals)}
        found.extend(monitor.update("chat", "m1", feats, float(i)))
    return found


def test_detections_carry_baseline_and_current_in_display_units() -> None:
    monitor = Monitor(
        MonitorConfig(detector=DetectorConfig(warmup=300)), feature_count=lambda _e: 2
    )
    found = _shifted_counts(monitor, before=400, after=1000, shift_at=1500, n=4000)
    by_feature = {d.feature: d for d in reversed(found)}  # the first detection of each
    chars = by_feature["output_chars"]
    # Typical (geometric-mean-like) counts, not log1p values around 6.
    assert 300 < chars.baseline < 500, chars
    # A recent (exponentially weighted) value, on its way from 400 to 1 000 characters.
    assert chars.baseline * 1.1 < chars.current < 1100, chars
    assert chars.unit == "characters"
    # Detector statistics stay on the internal scale.
    assert chars.statistic >= chars.threshold > 0
    rate = by_feature["refusal"]
    assert 5 < rate.baseline < 15 and 15 < rate.current < 45, rate
    assert rate.unit == "%"
    report = chars.report()
    assert report["unit"] == "characters"
    assert report["baseline"] == round(chars.baseline, 6)


def test_key_state_display_matches_the_detection() -> None:
    monitor = Monitor(MonitorConfig(), feature_count=lambda _e: 1)
    monitor.update("chat", "m1", {"output_chars": math.log1p(99.0), "preamble": 1.0}, None)
    state = monitor.get("chat", "m1")
    assert state is not None
    assert state.display("output_chars", math.log1p(99.0)) == pytest.approx(99.0)
    assert state.display("preamble", 0.25) == pytest.approx(25.0)
    assert state.display("sentence_words", 12.0) == 12.0
