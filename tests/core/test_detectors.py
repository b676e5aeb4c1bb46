import bisect
import math
import pickle
import random
import re
from array import array
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from driftmon.core import detectors
from driftmon.core.detectors import STATE_FIELDS, DetectorConfig, FeatureStream, FrozenPageHinkley
from driftmon.core.embeddings import EmbeddingReference, MewmaDetector
from driftmon.core.protocols import DriftDetector


def _stream(kind="continuous", target=1e6, **cfg):
    return FeatureStream("f", kind, target, DetectorConfig(**cfg))


def test_no_detection_during_warmup_even_on_wild_values():
    s = _stream(warmup=100)
    rng = random.Random(0)
    assert all(s.update(rng.uniform(-1e6, 1e6)) is None for _ in range(99))
    assert s.learning


def test_reference_is_learned_then_frozen_statistics_exposed():
    s = _stream(warmup=100)
    rng = random.Random(1)
    for _ in range(100):
        s.update(rng.gauss(10.0, 2.0))
    assert not s.learning
    assert abs(s.baseline - 10.0) < 0.6
    stats = s.statistics()
    assert set(stats) == {"page_hinkley", "adwin"}
    assert stats["page_hinkley"][1] > 5  # a calibrated threshold, not river's default 50


def test_one_shift_gives_one_detection_then_relearns():
    s = _stream(warmup=300)
    rng = random.Random(2)
    alarms = []
    for i in range(3000):
        x = rng.gauss(0.0, 1.0) if i < 1500 else rng.gauss(1.0, 1.0)
        a = s.update(x)
        if a is not None:
            alarms.append((i, a))
    assert len(alarms) == 1
    index, alarm = alarms[0]
    assert 1500 <= index < 1600
    assert alarm.baseline < 0.2 and alarm.current > 0.4
    # After the detection the reference is learned again from post-change data.
    assert abs(s.baseline - 1.0) < 0.2


def test_rate_shift_is_detected_on_a_binary_feature():
    s = _stream(kind="binary", warmup=300)
    rng = random.Random(3)
    first = None
    for i in range(4000):
        p = 0.05 if i < 2000 else 0.30
        if s.update(1.0 if rng.random() < p else 0.0) is not None and first is None:
            first = i
    assert first is not None and 2000 <= first < 2300


def test_downward_shift_is_detected():
    s = _stream(warmup=300)
    rng = random.Random(4)
    hits = [i for i in range(3000) if s.update(rng.gauss(5.0 if i < 1500 else 4.2, 1.0))]
    assert hits and 1500 <= hits[0] < 1700


def test_seeded_stream_detects_at_an_exact_index():
    s = _stream(warmup=300)
    rng = random.Random(11)
    hits = [i for i in range(2000) if s.update(rng.gauss(0.0 if i < 1000 else 0.8, 1.0))]
    assert hits == [1062]


def test_frozen_page_hinkley_matches_rivers_own_update():
    from river.drift import PageHinkley

    from driftmon.core.detectors import FrozenPageHinkley

    ours = FrozenPageHinkley(delta=0.25, threshold=6.0)
    reference = FrozenPageHinkley(delta=0.25, threshold=6.0)
    rng = random.Random(9)
    flags = []
    for i in range(20_000):
        z = rng.gauss(0.0 if (i // 2000) % 2 == 0 else 0.7, 1.0)
        ours.update(z)
        PageHinkley.update(reference, z)  # river's implementation on the same state
        assert ours.drift_detected == reference.drift_detected
        assert ours.statistic == reference.statistic
        flags.append(ours.drift_detected)
    assert sum(flags) >= 5  # the comparison covered detections and resets


def test_feature_stream_page_hinkley_is_rivers_page_hinkley_step_for_step():
    """FeatureStream keeps Page-Hinkley's state in typed fields (compiled hot path); fed the
    same standardised values, river's own update gives the same statistic and alarm."""
    import math

    from river.drift import PageHinkley

    from driftmon.core.detectors import Z_CLIP, FrozenPageHinkley, normal_scores

    s = _stream(warmup=300, adwin=False)
    rng = random.Random(21)
    warm = [rng.gauss(3.0, 2.0) for _ in range(300)]
    for x in warm:
        s.update(x)
    # The stream standardises the warm-up's normal scores (normal_scores), not raw values.
    warm32 = np.asarray(array("f", warm), dtype=np.float64)  # the stream keeps it as float32
    gx, gs = normal_scores(warm32)
    assert gx is not None and gs is not None and (s._gx, s._gs) == (gx, gs)

    def score(x: float) -> float:
        i = bisect.bisect_right(gx, x)
        return gs[i - 1] + (gs[i] - gs[i - 1]) * (x - gx[i - 1]) / (gx[i] - gx[i - 1])

    scores = np.interp(warm32, gx, gs)
    total, total_sq = float(scores.sum()), float(np.dot(scores, scores))
    mean = total / 300
    inv_sd = 1.0 / math.sqrt(max((total_sq - 300 * mean * mean) / 299, 0.0))
    threshold = s.statistics()["page_hinkley"][1]
    river_ph = FrozenPageHinkley(delta=0.25, threshold=threshold)
    steps = 0
    for _ in range(299):  # fewer than the reference size: no merge before the alarm
        x = rng.gauss(4.6, 2.0)
        z = max(-Z_CLIP, min(Z_CLIP, (score(x) - mean) * inv_sd))
        PageHinkley.update(river_ph, z)
        alarm = s.update(x)
        steps += 1
        if alarm is not None:
            assert river_ph.drift_detected
            assert alarm.statistic == river_ph.statistic
            break
        assert not river_ph.drift_detected
        assert s.statistics()["page_hinkley"][0] == river_ph.statistic
    else:
        raise AssertionError("a 0.8 sd shift should be detected within 299 events")
    assert steps > 5  # compared over a real run, not on the first value


def test_river_detectors_load_without_river_drift_package_imports():
    """river.drift's __init__ pulls scikit-learn and scipy; driftmon skips it (memory)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from driftmon.core.detectors import FeatureStream\n"
        "heavy = sorted(m for m in ('sklearn', 'river.datasets', 'river.drift')"
        " if m in sys.modules)\n"
        "from driftmon.core import _river\n"
        "import river.drift\n"
        "print(heavy, river.drift.ADWIN is _river.ADWIN, "
        "river.drift.PageHinkley is _river.PageHinkley)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[] True True"


def test_rare_rate_page_hinkley_takes_the_budget_adwin_leaves_unused():
    def threshold(adwin):
        s = _stream(kind="binary", warmup=300, adwin=adwin)
        for i in range(300):
            s.update(1.0 if i % 150 == 0 else 0.0)  # 2 events in the warm-up
        return s.statistics()["page_hinkley"][1]

    assert threshold(adwin=True) < threshold(adwin=False)


def test_rare_rate_rise_is_detected():
    s = _stream(kind="binary", warmup=300)
    rng = random.Random(12)
    hits = []
    for i in range(6000):
        p = 0.005 if i < 3000 else 0.05
        if s.update(1.0 if rng.random() < p else 0.0) is not None:
            hits.append(i)
    assert hits and 3000 <= hits[0] < 3400


# --- rare 0/1 rates: the likelihood-ratio CUSUM ------------------------------------------

# The default budget (10⁶ events per false alarm per key) over a key's 17 features and
# both detectors: each detector's target.
DEFAULT_TARGET = 1e6 * 17 * 2


def _new_behaviour(seed, before, rate=0.35, absent=0.0, target=DEFAULT_TARGET):
    """``before`` values of ``absent``, then ``rate`` of the other value: (values fed after
    the change, occurrences among them, the alarm) at the first alarm."""
    s = FeatureStream("code_fence", "binary", target, DetectorConfig())
    assert all(s.update(absent) is None for _ in range(before))
    rng = random.Random(seed)
    occurrences = 0
    for i in range(1, 5001):
        new = rng.random() < rate
        occurrences += new
        alarm = s.update(1.0 - absent if new else absent)
        if alarm is not None:
            return i, occurrences, alarm
    raise AssertionError("no alarm")


def test_a_behaviour_absent_from_the_reference_is_detected_within_four_occurrences():
    # 0 code fences in a 600-event reference, then 35 % of answers fenced (issue 16). Before
    # the likelihood-ratio CUSUM: a median 18 occurrences and 52 events (ADWIN or the
    # standardised CUSUM, whose budget covers rates up to ~1 % that 0 in 600 allows).
    assert _new_behaviour(seed=0, before=600)[:2] == (16, 4)
    runs = [_new_behaviour(seed, before=600) for seed in range(40)]
    counts = sorted(n for _, n, _ in runs)
    assert counts[len(counts) // 2] <= 4 and counts[-1] <= 5
    assert all(alarm.detector == "page_hinkley" for _, _, alarm in runs)
    # With the reference at 2 400 events (a 3 000-event quiet start), within 3.
    assert max(n for _, n, _ in (_new_behaviour(seed, before=3000) for seed in range(20))) <= 3


def test_the_rare_value_can_be_a_zero():
    # A feature that was always 1 (answers always end with a full stop) starts missing it.
    runs = [_new_behaviour(seed, before=600, absent=1.0) for seed in range(20)]
    assert max(n for _, n, _ in runs) <= 5


def test_a_rare_rate_alarm_carries_its_statistic_and_onset_on_the_page_hinkley_scale():
    s = FeatureStream("code_fence", "binary", DEFAULT_TARGET, DetectorConfig())
    for _ in range(600):
        s.update(0.0)
    stat, threshold = s.statistics()["page_hinkley"]
    assert stat == 0.0 and threshold < math.inf
    values = [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    alarms = []
    for x in values:
        alarms.append(s.update(x))
        if alarms[-1] is not None:
            break
        assert 0.0 <= s.statistic <= s.threshold
    alarm = alarms[-1]
    assert alarm is not None and len(alarms) == 8  # at the fourth 1
    assert alarm.statistic > alarm.threshold == threshold
    assert alarm.since_onset == 7  # from the first 1 on: where the walk left 0


def test_a_rate_that_is_not_rare_gets_no_likelihood_ratio_cusum():
    s = _stream(kind="binary", warmup=300)
    for i in range(300):
        s.update(1.0 if i % 10 == 0 else 0.0)  # 10 %
    assert not s._rb_on and s._rb_threshold == math.inf
    rare = _stream(kind="binary", warmup=300)
    for _ in range(300):
        rare.update(0.0)
    assert rare._rb_on and rare._rb_threshold < math.inf


def test_a_stream_pickled_before_the_rare_rate_cusum_restores_without_it():
    s = FeatureStream("code_fence", "binary", DEFAULT_TARGET, DetectorConfig())
    for _ in range(400):
        s.update(0.0)
    restore, state = s.__reduce__()
    old = restore(*state[:31])  # the 31 fields a snapshot held before
    assert not old._rb_on
    for _ in range(200):  # to the next merge, at 600
        assert old.update(0.0) is None and s.update(0.0) is None
    assert old._rb_on and old._rb_threshold == s._rb_threshold


# --- continuous tails: likelihood-ratio CUSUMs of tail exceedances (issue 16, item 3) -----


def _spread_canary(seed, share, tails=True, monkeypatch=None, before=3000, after=4000):
    """``before`` N(0, 1) values, then ``share`` of them from N(0, 3²): the mean does not
    move, the tails grow. Values after the start to the first alarm (None: none)."""
    s = FeatureStream("output_chars", "continuous", DEFAULT_TARGET, DetectorConfig())
    if not tails:
        assert monkeypatch is not None
        monkeypatch.setattr(detectors, "tail_threshold", lambda *_: math.inf)
    rng = random.Random(seed)
    for i in range(before + after):
        wide = i >= before and rng.random() < share
        alarm = s.update(rng.gauss(0.0, 3.0 if wide else 1.0))
        if alarm is not None:
            assert i >= before, "a false alarm before the change"
            return i - before, alarm
    return None


def test_a_share_of_traffic_spread_wider_is_caught_by_the_tail_cusums(monkeypatch):
    # A canary that leaves the mean alone (30 % of answers from a wider distribution, say
    # far shorter and far longer ones): the mean CUSUM and ADWIN barely see it.
    with_tails = [_spread_canary(seed, 0.3) for seed in range(10)]
    assert all(r is not None and r[1].detector == "page_hinkley" for r in with_tails)
    delays = sorted(r[0] for r in with_tails if r is not None)
    assert delays[5] < 1000, delays
    without = [_spread_canary(seed, 0.3, False, monkeypatch) for seed in range(10)]
    assert sum(r is not None for r in without) <= 3, without


def test_the_tails_are_watched_from_a_reference_of_1200_and_share_the_budget():
    s = FeatureStream("output_chars", "continuous", DEFAULT_TARGET, DetectorConfig())
    rng = random.Random(4)
    thresholds = {}
    for _ in range(2400):
        s.update(rng.gauss(0.0, 1.0))
        thresholds[s.ref_n] = (s._tl_on, s._ph_threshold, s._tu_threshold, s._td_threshold)
    assert thresholds[300][0] is False and thresholds[600][0] is False
    on, ph, up, down = thresholds[1200]
    assert on and 10 < up < 40 and 10 < down < 40
    # ~10 % of the scores in each tail of the reference, counted
    assert 0.06 < s._tl_hi_ref / s.ref_n < 0.14 and 0.06 < s._tl_lo_ref / s.ref_n < 0.14
    # Page-Hinkley keeps 1 - TAIL_SHARE of its budget: a slightly higher threshold
    from driftmon.core.calibration import TAIL_SHARE, ph_threshold_continuous

    assert s._shape is not None
    alone = ph_threshold_continuous(s._shape, 0.25, 1200, DEFAULT_TARGET)
    shared = ph_threshold_continuous(s._shape, 0.25, 1200, DEFAULT_TARGET / (1 - TAIL_SHARE))
    assert ph == shared > alone


def test_a_constant_warm_up_has_no_tails():
    s = _stream(warmup=100)
    for _ in range(1300):
        s.update(5.0)
    assert s.ref_n >= 800 and not s._tl_on and s._tl_hi_ref == -1


def test_a_stream_pickled_before_the_tail_cusums_restores_without_them():
    s = FeatureStream("output_chars", "continuous", DEFAULT_TARGET, DetectorConfig())
    rng = random.Random(6)
    for _ in range(1000):
        s.update(rng.gauss(0.0, 1.0))
    restore, state = s.__reduce__()
    old = restore(*state[: STATE_FIELDS.index("_tl_on")])  # the 45 fields held before
    assert not old._tl_on and old._tl_hi_ref == -1
    for _ in range(1400):  # past the merge at 1 200, where s starts watching its tails
        x = rng.gauss(0.0, 1.0)
        assert old.update(x) is None and s.update(x) is None
    assert s._tl_on and not old._tl_on  # its reference's exceedances were never counted
    assert old.statistics().keys() == s.statistics().keys()
    old.relearn()
    for _ in range(1200):
        old.update(rng.gauss(0.0, 1.0))
    assert old._tl_on


def _first_alarm(stream, values):
    for i, x in enumerate(values):
        alarm = stream.update(x)
        if alarm is not None:
            return i, alarm
    raise AssertionError("no alarm")


def test_page_hinkley_estimates_where_the_change_began():
    # Page's CUSUM change-point estimate: where the statistic last left its extreme.
    errors = []
    for seed in range(20):
        rng = random.Random(seed)
        values = [
            rng.gauss(0.0 if i < 1500 else (1.0 if seed % 2 else -1.0), 1.0) for i in range(4000)
        ]
        index, alarm = _first_alarm(_stream(adwin=False), values)
        assert alarm.detector == "page_hinkley"
        assert 1 <= alarm.since_onset <= index - 300  # within the monitored stretch
        errors.append(index - alarm.since_onset + 1 - 1500)
    errors.sort()
    assert abs(errors[10]) <= 10, errors  # median error in events
    assert sum(abs(e) <= 50 for e in errors) >= 18, errors


def test_an_adwin_alarm_carries_the_cusum_onset_estimate():
    # A 0/1 rate from 50 % to 70 %: ADWIN fires first in some runs (14 of these 60).
    found = []
    for seed in range(60):
        rng = random.Random(seed)
        values = [float(rng.random() < (0.5 if i < 1500 else 0.7)) for i in range(4000)]
        index, alarm = _first_alarm(_stream("binary"), values)
        if alarm.detector == "adwin":
            found.append(index - alarm.since_onset + 1 - 1500)
    assert len(found) >= 5
    found.sort()
    assert abs(found[len(found) // 2]) <= 50, found


def test_without_page_hinkley_there_is_no_onset_estimate():
    rng = random.Random(3)
    values = [rng.gauss(0.0 if i < 1500 else 2.0, 1.0) for i in range(4000)]
    _, alarm = _first_alarm(_stream(page_hinkley=False), values)
    assert alarm.detector == "adwin" and alarm.since_onset == -1


def test_a_stream_pickled_before_the_onset_estimate_restores():
    s = _stream(warmup=100)
    rng = random.Random(5)
    for _ in range(500):
        s.update(rng.gauss(0.0, 1.0))
    restore, state = s.__reduce__()
    old = restore(*state[:29])  # the 29 fields a snapshot held before
    assert old.statistics() == s.statistics()
    index, alarm = _first_alarm(old, [rng.gauss(3.0, 1.0) for _ in range(200)])
    assert index < 20 and 1 <= alarm.since_onset <= 500 + index + 1


# --- one declaration of the state, the detector protocol ---------------------------------

PXD = Path(detectors.__file__).with_name("detectors.pxd")


def _pxd_fields() -> dict[str, tuple[bool, str]]:
    """FeatureStream's fields in detectors.pxd: name → (public, C type)."""
    body = PXD.read_text().split("cdef class FeatureStream:")[1]
    fields = re.findall(r"^    cdef (public )?(\w+(?: \w+)?|[\w.]+) (\w+)$", body, re.M)
    return {name: (bool(public), ctype) for public, ctype, name in fields}


def test_the_pxd_types_exactly_the_declared_fields_and_exposes_the_state() -> None:
    fields = _pxd_fields()
    assert set(fields) == set(FeatureStream.__slots__)
    assert set(STATE_FIELDS) <= set(FeatureStream.__slots__)
    assert len(STATE_FIELDS) == len(set(STATE_FIELDS)) == 60
    assert [f for f in STATE_FIELDS if not fields[f][0]] == []  # pickling reads them by name


def _sentinel_state() -> tuple[object, ...]:
    """A distinct value for every state field, of the field's C type."""
    values: list[object] = []
    for i, field in enumerate(STATE_FIELDS):
        ctype = _pxd_fields()[field][1]
        if field == "_config":
            values.append(DetectorConfig(warmup=123))
        elif field == "_adwin":
            values.append(SimpleNamespace(_helper=f"helper {i}"))
        elif ctype == "double":
            values.append(i + 0.25)
        elif ctype == "long long":
            values.append(i)
        elif ctype == "bint":
            values.append(field == "_learning")
        elif ctype == "str":
            values.append(f"value {i}")
        elif ctype == "cpython.array.array":
            values.append(array("d", [i + 0.5]))
        else:
            values.append(SimpleNamespace(field=field))
    return tuple(values)


def test_restoring_sets_each_field_of_the_declaration_from_its_position() -> None:
    state = _sentinel_state()
    stream = detectors._restore_stream(*state)
    assert tuple(getattr(stream, f) for f in STATE_FIELDS) == state
    assert stream.__reduce__() == (detectors._restore_stream, state)


def test_a_malformed_normal_score_map_is_refused_on_restore() -> None:
    """Compiled, the map is read through C pointers: a snapshot whose map arrays differ in
    length or type (or lack one of the two) must not restore."""
    s = _stream(warmup=100)
    rng = random.Random(3)
    for _ in range(150):
        s.update(rng.gauss(0.0, 1.0))
    _, state = s.__reduce__()
    at_gx, at_gs = STATE_FIELDS.index("_gx"), STATE_FIELDS.index("_gs")
    gx, gs = state[at_gx], state[at_gs]
    assert gx is not None and len(gx) == len(gs) > 2
    detectors._restore_stream(*state)  # the map as pickled restores
    for bad_gx, bad_gs in (
        (gx, gs[:-1]),
        (gx, None),
        (gx, array("f", gs)),
        (array("d"), array("d")),
    ):
        bad = list(state)
        bad[at_gx], bad[at_gs] = bad_gx, bad_gs
        with pytest.raises(ValueError, match="normal-score map"):
            detectors._restore_stream(*bad)


def test_a_pickled_stream_holds_the_declared_fields_in_order() -> None:
    s = _stream(warmup=100)
    rng = random.Random(2)
    for _ in range(400):
        s.update(rng.gauss(0.0, 1.0))
    _, state = s.__reduce__()
    assert state == tuple(getattr(s, f) for f in STATE_FIELDS)
    copy = pickle.loads(pickle.dumps(s))
    values = [rng.gauss(0.0 if i < 300 else 1.5, 1.0) for i in range(800)]
    assert _first_alarm(copy, values)[0] == _first_alarm(s, values)[0]


def test_feature_stream_follows_the_detector_protocol() -> None:
    s = _stream(warmup=100)
    assert isinstance(s, DriftDetector)
    assert not s.drift_detected and s.statistic == 0.0 and s.threshold == math.inf
    rng = random.Random(4)
    values = [rng.gauss(0.0 if i < 600 else 2.0, 1.0) for i in range(1000)]
    fired = []
    for i, x in enumerate(values):
        alarm = s.update(x)
        assert s.drift_detected == (alarm is not None)
        if alarm is None and not s.learning:
            assert 0.0 <= s.statistic <= s.threshold < math.inf
        if alarm is not None:
            fired.append(i)
    assert fired and fired[0] >= 600
    s.reset()
    assert s.learning and s.threshold == math.inf


def test_the_river_page_hinkley_and_mewma_follow_the_protocol_too() -> None:
    ph = FrozenPageHinkley(delta=0.5, threshold=15.0)
    assert isinstance(ph, DriftDetector)
    fired = next(i for i in range(100) if (ph.update(2.0), ph.drift_detected)[1])
    # The first value sets the minimum; eleven more steps of 2.0 - 0.5 pass 15.
    assert fired == 11 and ph.statistic > ph.threshold
    ph.reset()
    assert not ph.drift_detected and ph.statistic == 0.0

    rng = np.random.default_rng(1)
    ref = EmbeddingReference(fit_n=100, calib_n=100, rank=4)
    for v in rng.normal(size=(200, 8)):
        ref.add(v)
    mewma = MewmaDetector(ref, target_arl=1_000)
    assert isinstance(mewma, DriftDetector)
    shifted = rng.normal(size=(300, 8)) + 3.0
    fired = next(i for i, v in enumerate(shifted) if (mewma.update(v), mewma.drift_detected)[1])
    assert fired < 50
    mewma.update(shifted[0])
    mewma.reset()
    assert not mewma.drift_detected and mewma.statistic == 0.0


# --- normal scores ---------------------------------------------------------------------


def test_normal_scores_make_a_skewed_or_discrete_reference_standard_normal():
    from driftmon.core.detectors import normal_scores

    rng = np.random.default_rng(5)
    skewed = np.log1p(rng.lognormal(6.0, 1.0, 3000) * (rng.random(3000) < 0.9))  # long left tail
    counts = rng.poisson(1.3, 3000).astype(np.float64)
    for values in (skewed, counts):
        gx, gs = normal_scores(values[:300])
        assert gx is not None and gs is not None
        assert list(gx) == sorted(set(gx)) and list(gs) == sorted(gs)  # increasing: monotone
        later = np.interp(values[300:], gx, gs)  # the reference's own distribution, later
        assert abs(later.mean()) < 0.1 and 0.85 < later.std() < 1.15
    assert normal_scores(np.full(300, 2.5)) == (None, None)  # constant: raw values


def test_a_shift_in_the_bulk_of_a_skewed_feature_is_not_diluted_by_its_tail():
    # Log lengths with 10 % of near-empty answers: a 0.5-unit rise of the other 90 % is
    # ~0.3 raw standard deviations (the tail inflates the sd) but ~0.6 in normal scores.
    rng = random.Random(8)

    def value(shift: float) -> float:
        return 0.5 if rng.random() < 0.1 else rng.gauss(6.0 + shift, 0.5)

    delays = []
    for _ in range(20):
        values = [value(0.0 if i < 1200 else 0.5) for i in range(3000)]
        index, alarm = _first_alarm(_stream(), values)
        assert index >= 1200 and alarm.detector == "page_hinkley"
        delays.append(index - 1200)
    delays.sort()
    # A CUSUM with k = 0.25 on a 0.3 sd shift needs hundreds of events; on 0.6, tens.
    assert delays[10] < 80, delays


def test_a_stream_pickled_before_normal_scores_restores_on_raw_values():
    s = _stream(warmup=100)
    rng = random.Random(9)
    warm = [rng.gauss(10.0, 2.0) for _ in range(100)]
    for x in warm:
        s.update(x)
    _, new_state = s.__reduce__()
    # What the code before normal scores pickled: 38 fields, the reference in raw units.
    state = dict(zip(STATE_FIELDS, new_state, strict=True))
    mean, sd = float(np.mean(warm)), float(np.std(warm, ddof=1))
    state.update(
        _mean=mean,
        _inv_sd=1.0 / sd,
        _ref_sum=float(np.sum(warm)),
        _ref_sumsq=float(np.dot(warm, warm)),
    )
    old = detectors._restore_stream(*list(state.values())[: STATE_FIELDS.index("_gx")])
    assert old._gx is None and old._gs is None
    assert old.baseline == pytest.approx(10.0, abs=0.5)
    values = [rng.gauss(10.0 if i < 100 else 13.0, 2.0) for i in range(400)]
    index, alarm = _first_alarm(old, values)
    assert index >= 100 and alarm.baseline == pytest.approx(10.0, abs=0.5)
