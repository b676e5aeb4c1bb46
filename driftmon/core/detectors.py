"""The one place river detectors are built and calibrated.

A :class:`FeatureStream` watches one feature of one key. It learns a reference from its
first ``warmup`` values, standardises later values against it, and feeds them to a
two-sided Page-Hinkley test with a frozen reference (Page's CUSUM) and to ADWIN. The
reference keeps improving while the stream is quiet: values are collected in a block
that is merged into the reference only when the block is as large as the reference
(doubling), so a shift is never averaged into the reference it is being compared with
before it has had a whole block's worth of events to be detected. After a detection the
reference is learned again from post-change data. A continuous feature is compared on
the normal scores of its warm-up (:func:`normal_scores`: a piecewise-linear map through the
warm-up's quantiles to standard-normal quantiles), so a long tail does not dilute a move of
the bulk; displays, alarm baselines and :meth:`FeatureStream.raw_moments` stay in the
feature's own units. On a 0/1 feature whose reference rate is
rare (or whose complement is), Page-Hinkley also runs a one-sided CUSUM of the Bernoulli
likelihood ratio against an upper bound of that rate (:func:`calibration.rare_steps`), with
part of its budget: a behaviour absent from the reference is caught in a few occurrences.
On a continuous feature with a reference of at least ``calibration.TAIL_MIN_REF`` values,
two more one-sided Bernoulli CUSUMs watch how often the normal scores pass the warm-up's
10 % and 90 % quantiles (:func:`calibration.tail_steps`), with part of Page-Hinkley's
budget: a share of the traffic that moves into a tail (a canary, the start of a rollout)
moves the mean little but those rates much.

This module is the per-event hot path. It is plain Python and also compiled by Cython
when the package is built (``detectors.pxd`` gives the types; ``setup.py`` builds it,
falling back to this source if no C compiler is present). The Page-Hinkley arithmetic
in :class:`FeatureStream` is river's ``PageHinkley.update`` specialised to ``alpha=1``
and a frozen reference, with its state in typed fields; :class:`FrozenPageHinkley` is
the same test as a river object, and a test runs both step for step.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right as _bisect
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from operator import attrgetter
from statistics import NormalDist
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from driftmon.core._river import ADWIN, PageHinkley
from driftmon.core.calibration import (
    TAIL_SHARE,
    TAIL_Z,
    ShapeTable,
    adwin_delta,
    ph_threshold_binary,
    ph_threshold_continuous,
    rare_steps,
    rare_threshold_binary,
    shape_table,
    tail_steps,
    tail_threshold,
)
from driftmon.core.registry import FEATURES, FeatureKind, check_feature

FloatArray = NDArray[np.float64]
DETECTORS = ("page_hinkley", "adwin")
Kind = Literal["continuous", "binary"]
"""A stream's kind: a registered ``rate`` feature is watched as a ``binary`` stream (the
name pickled in snapshots)."""

_STREAM_KINDS: Final[dict[FeatureKind, Kind]] = {"continuous": "continuous", "rate": "binary"}

CONTINUOUS_FEATURES: Final = frozenset(
    name for name, f in FEATURES.items() if _STREAM_KINDS[f.kind] == "continuous"
)
"""From the registry (:mod:`driftmon.core.registry`); every other feature is a 0/1 rate."""


def feature_kind(name: str) -> Kind:
    """The stream kind of a feature; a name not registered is a named contract check, a rate
    (:func:`driftmon.core.registry.check_feature`). Called when a stream is created."""
    registered = FEATURES.get(name)
    return _STREAM_KINDS[registered.kind if registered is not None else check_feature(name).kind]


Z_CLIP = 4.0  # bounds the influence of one outlier on the CUSUM and on ADWIN
N_QUANTILES = 48
EWMA_CURRENT = 0.02  # "current" value shown beside the baseline: ~50-event memory
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
# Typed C copies of the public constants when compiled (detectors.pxd).
_ZC = Z_CLIP
_EWMA = EWMA_CURRENT
_TZ = TAIL_Z
_QUANTILE_POSITIONS = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
# Past the warm-up's extremes the score map rises by one more score over this many warm-up
# standard deviations, then stays flat: a heavy tail's rare huge values score little above
# the most extreme warm-up value (the calibration assumes the warm-up's score distribution).
_TAIL_SDS = 8.0
_NORMAL = NormalDist()
# The Cython extension is loaded (see setup.py), not this source: the score map is then
# read through C pointers into its arrays (bisect on an array.array makes a float object
# per comparison, and the map is read on every continuous value).
_COMPILED = __file__.endswith(tuple(EXTENSION_SUFFIXES))


def normal_scores(values: FloatArray) -> tuple[array[float], array[float]] | tuple[None, None]:
    """The piecewise-linear map from a continuous feature's values to normal scores,
    learned from its warm-up: knots at the warm-up's quantiles (its distinct values when it
    has fewer, mid-ranks for ties), each mapped to the standard normal quantile of its
    empirical CDF (the warm-up's minimum and maximum are knots too); past them, one more
    score over ``_TAIL_SDS`` warm-up standard deviations, flat beyond that.
    ``(None, None)`` for a constant warm-up (its values are then used as they are).

    Under the reference the scores are close to N(0, 1) whatever the feature's shape (the
    long left tail of log lengths, counts with a few values), so a change in the bulk of a
    skewed distribution is not diluted by the standard deviation its tail inflates.
    """
    v = np.sort(values)
    n = len(v)
    if v[0] == v[-1]:
        return None, None  # a constant warm-up: raw values, standardised as they are
    xs = np.unique(v)  # counts and other discrete features: every value a knot
    if len(xs) > N_QUANTILES:
        inner = np.interp(_QUANTILE_POSITIONS * (n - 1), np.arange(n), v)
        xs = np.unique(np.concatenate([[v[0]], inner, [v[-1]]]))
    mid = (np.searchsorted(v, xs, "left") + np.searchsorted(v, xs, "right")) / (2.0 * n)
    mid = np.clip(mid, 0.5 / n, 1.0 - 0.5 / n)
    scores = np.array([_NORMAL.inv_cdf(float(u)) for u in mid])
    sd = float(v.std())
    gx = np.concatenate([[xs[0] - _TAIL_SDS * sd], xs, [xs[-1] + _TAIL_SDS * sd]])
    gs = np.concatenate([[scores[0] - 1.0], scores, [scores[-1] + 1.0]])
    return array("d", gx.tolist()), array("d", gs.tolist())


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    warmup: int = 300
    k: float = 0.25  # CUSUM drift in reference standard deviations: tuned to ~0.5σ shifts
    page_hinkley: bool = True
    adwin: bool = True
    adwin_clock: int = 4


class _FrozenMean:
    """Stands in for river's running mean so Page-Hinkley compares with a fixed 0."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def update(self, x: float) -> None:
        self.n += 1

    def get(self) -> float:
        return 0.0


class FrozenPageHinkley(PageHinkley):
    """river's two-sided Page-Hinkley on standardised input with a frozen reference of 0.

    With ``alpha=1`` this is Page's CUSUM; river's own running mean would absorb a shift
    into the reference it is compared with.

    >>> import random
    >>> rng = random.Random(7)
    >>> ph = FrozenPageHinkley(delta=0.5, threshold=15.0)
    >>> stream = [rng.gauss(0, 1) for _ in range(1000)] + [rng.gauss(1.5, 1) for _ in range(100)]
    >>> next(i for i, z in enumerate(stream) if (ph.update(z), ph.drift_detected)[1])
    1016
    """

    def __init__(self, delta: float, threshold: float) -> None:
        super().__init__(min_instances=1, delta=delta, threshold=threshold, alpha=1.0)

    def reset(self) -> None:
        """river's ``_reset``, public for :class:`driftmon.core.protocols.DriftDetector`."""
        self._reset()

    def _reset(self) -> None:
        super()._reset()  # type: ignore[no-untyped-call]
        self._x_mean = _FrozenMean()  # type: ignore[assignment]

    def update(self, x: float) -> None:
        """river's update, specialised to alpha=1 and the frozen mean of 0.

        Same arithmetic and state as ``PageHinkley.update`` (a test runs both side by
        side); it skips the mean object and the mode dispatch, which cost more than the
        test itself on the per-event hot path.
        """
        if self._drift_detected:
            self._reset()
        self._x_mean.n += 1
        inc = self._sum_increase + x - self.delta
        dec = self._sum_decrease + x + self.delta
        self._sum_increase = inc
        self._sum_decrease = dec
        if inc < self._min_increase:
            self._min_increase = inc
        if dec > self._max_decrease:
            self._max_decrease = dec  # type: ignore[assignment]  # river starts it at int -1
        threshold = self.threshold
        self._drift_detected = (
            inc - self._min_increase > threshold or self._max_decrease - dec > threshold
        )

    @property
    def statistic(self) -> float:
        """The larger of the upward and downward CUSUM values."""
        up = self._sum_increase - self._min_increase if self._x_mean.n else 0.0
        down = self._max_decrease - self._sum_decrease if self._x_mean.n else 0.0
        return float(max(up, down, 0.0))


@dataclass(slots=True)
class Alarm:
    """One detector firing on one feature stream (the pipeline adds key and position)."""

    feature: str
    detector: str
    baseline: float
    current: float
    statistic: float
    threshold: float
    # Values of the stream since the estimated start of the change, the firing value
    # included: the Page-Hinkley CUSUM's change-point estimate (where it last left its
    # extreme), for ADWIN's alarms too; -1 when Page-Hinkley is off.
    since_onset: int


STATE_FIELDS: Final = (
    "name",
    "kind",
    "target_arl",
    "_config",
    "n",
    "current",
    "_detected_at",
    "_learning",
    "_warm",
    "_ph_on",
    "_ph_k",
    "_ph_threshold",
    "_ph_n",
    "_ph_inc",
    "_ph_dec",
    "_ph_min",
    "_ph_max",
    "_adwin",
    "ref_n",
    "_mean",
    "_inv_sd",
    "_z0",
    "_z1",
    "_shape",
    "_blk_n",
    "_blk_sum",
    "_blk_sumsq",
    "_ref_sum",
    "_ref_sumsq",
    "_ph_argmin",
    "_ph_argmax",
    "_rb_on",
    "_rb_minority",
    "_rb_up",
    "_rb_down",
    "_rb_threshold",
    "_rb_s",
    "_rb_zero_at",
    "_gx",
    "_gs",
    "_raw_blk_sum",
    "_raw_blk_sumsq",
    "_raw_ref_sum",
    "_raw_ref_sumsq",
    "_raw_mean",
    "_tl_on",
    "_tl_hi_blk",
    "_tl_lo_blk",
    "_tl_hi_ref",
    "_tl_lo_ref",
    "_tu_up",
    "_tu_down",
    "_tu_threshold",
    "_tu_s",
    "_tu_zero_at",
    "_td_up",
    "_td_down",
    "_td_threshold",
    "_td_s",
    "_td_zero_at",
)
"""A :class:`FeatureStream`'s state, in its pickled order: the one list of its fields.

``__slots__`` adds the three derived from them on restore and ``__reduce__`` reads them by
name; ``detectors.pxd`` types them and ``_set_state`` unpacks them (for speed), both checked
against this list by tests/core/test_detectors.py. Appending a field needs a restore rule for
older snapshots (as for ``_ph_argmin``/``_ph_argmax`` and the ``_rb_*`` fields); reordering
or removing one needs a new ``SNAPSHOT_VERSION``."""

_FIELDS_BEFORE_ONSET: Final = STATE_FIELDS.index("_ph_argmin")  # older snapshots: 29 fields
_FIELDS_BEFORE_RARE: Final = STATE_FIELDS.index("_rb_on")  # then 31 fields
_FIELDS_BEFORE_SCORES: Final = STATE_FIELDS.index("_gx")  # then 38 fields
_FIELDS_BEFORE_TAILS: Final = STATE_FIELDS.index("_tl_on")  # then 45 fields
_RAW_FROM: Final = tuple(
    STATE_FIELDS.index(f) for f in ("_blk_sum", "_blk_sumsq", "_ref_sum", "_ref_sumsq", "_mean")
)  # an older snapshot's reference is in raw units: the _raw_* fields are copies
# A stream restored from a snapshot taken before the rare-rate CUSUM runs without it until
# its next reference merge.
_RARE_OFF: Final = (False, 1.0, 0.0, 0.0, math.inf, 0.0, 0)
# One restored from before the tail CUSUMs runs without them until it learns a reference
# again (its reference's exceedances were not counted: -1).
_TAILS_OFF: Final = (False, 0, 0, -1, -1, 0.0, 0.0, math.inf, 0.0, 0, 0.0, 0.0, math.inf, 0.0, 0)
_get_state: Final = attrgetter(*STATE_FIELDS)  # the fields as one tuple, read in C


class FeatureStream:
    """Reference, detectors and display values of one feature of one key."""

    # Compiled, detectors.pxd declares these as typed fields of an extension type
    # (public ones: pickling reads and writes them by name).
    __slots__ = (*STATE_FIELDS, "_adwin_helper", "_binary", "_warmup")

    def __init__(self, name: str, kind: Kind, target_arl: float, config: DetectorConfig) -> None:
        self.name = name
        self.kind: Kind = kind
        self.target_arl = target_arl
        self._config = config
        self._warmup = config.warmup
        self._binary = kind == "binary"
        self.n = 0  # values seen
        self.current = math.nan
        self._detected_at = -1
        self.relearn()

    # -- reference ------------------------------------------------------------------
    def relearn(self) -> None:
        """Forget the reference and the detectors; learn them again from new values."""
        # While all keys of a busy daemon learn at once, these buffers are most of its
        # memory. A 0/1 feature needs only its count and sum (kept in the block fields).
        # A continuous one keeps its values for the shape of its distribution, as float32
        # (4 bytes a value, not a 24-byte float object and a pointer); its mean and
        # variance come from the exact float64 sums.
        self._learning = True
        self._warm: array[float] | None = None if self._binary else array("f")
        self._ph_on = False
        self._ph_k = self._config.k
        self._ph_threshold = math.inf
        self._rb_on = False
        self._rb_minority = 1.0
        self._rb_up = self._rb_down = 0.0
        self._rb_threshold = math.inf
        self._tl_on = False
        self._tu_up = self._tu_down = self._td_up = self._td_down = 0.0
        self._tu_threshold = self._td_threshold = math.inf
        self._tl_hi_blk = self._tl_lo_blk = 0
        self._tl_hi_ref = self._tl_lo_ref = 0  # -1: not counted, tails off
        self._ph_reset()
        self._adwin: ADWIN | None = None
        self._adwin_helper: object = None
        self.ref_n = 0
        self._mean = 0.0
        self._inv_sd = 1.0
        self._z0 = self._z1 = 0.0
        self._shape: ShapeTable | None = None
        self._blk_n = 0
        self._blk_sum = self._blk_sumsq = 0.0
        self._ref_sum = self._ref_sumsq = 0.0
        self._gx: array[float] | None = None
        self._gs: array[float] | None = None
        self._raw_blk_sum = self._raw_blk_sumsq = 0.0
        self._raw_ref_sum = self._raw_ref_sumsq = 0.0
        self._raw_mean = 0.0

    def _ph_reset(self) -> None:
        # river's PageHinkley._reset, including its start of the decrease maximum at -1.
        self._ph_n = 0
        self._ph_inc = self._ph_dec = 0.0
        self._ph_min = math.inf
        self._ph_max = -1.0
        self._ph_argmin = self._ph_argmax = 0  # _ph_n when the extremes were reached
        self._rb_s = 0.0
        self._rb_zero_at = 0  # _ph_n when the rare-rate CUSUM was last at 0
        self._tu_s = self._td_s = 0.0
        self._tu_zero_at = self._td_zero_at = 0  # likewise for the tail CUSUMs

    @property
    def learning(self) -> bool:
        return bool(self._learning)

    @property
    def baseline(self) -> float:
        return self._raw_mean if self.ref_n else math.nan

    def raw_moments(self) -> tuple[float, float, float]:
        """``(n, sum, sum of squares)`` of the values of the reference and of the block being
        gathered for it (the warm-up while learning), in the feature's own units."""
        n = float(self.ref_n + self._blk_n)
        if self._learning or self._binary:
            return n, self._ref_sum + self._blk_sum, self._ref_sumsq + self._blk_sumsq
        return (
            n,
            self._raw_ref_sum + self._raw_blk_sum,
            self._raw_ref_sumsq + self._raw_blk_sumsq,
        )

    # -- the detector protocol (driftmon.core.protocols.DriftDetector) --------------------
    # Read outside the hot path: update() returns the alarm itself.
    @property
    def drift_detected(self) -> bool:
        """Whether the last value fed made a detector fire."""
        return self._detected_at >= 0 and self._detected_at == self.n

    @property
    def statistic(self) -> float:
        """The Page-Hinkley (CUSUM) statistic of the current test; 0 while learning."""
        return self._ph_statistic()

    @property
    def threshold(self) -> float:
        """The Page-Hinkley threshold of the current test; infinite while learning."""
        return float(self._ph_threshold)

    def reset(self) -> None:
        """The protocol's name for :meth:`relearn`."""
        self.relearn()

    def _finish_warmup(self) -> None:
        values = self._warm
        self._warm = None
        self._learning = False
        if values is not None:
            raw = np.asarray(values, dtype=np.float64)
            # The displays' sums are the exact ones accumulated while learning, not the
            # (compact, float32) warm-up copy's.
            self._raw_blk_sum, self._raw_blk_sumsq = self._blk_sum, self._blk_sumsq
            gx, gs = normal_scores(raw)
            self._gx, self._gs = gx, gs
            arr = raw if gx is None or gs is None else np.interp(raw, gx, gs)
            if gx is None:
                self._tl_hi_ref = self._tl_lo_ref = -1  # raw values: no tails to watch
            else:
                self._tl_hi_blk = int(np.count_nonzero(arr > TAIL_Z))
                self._tl_lo_blk = int(np.count_nonzero(arr < -TAIL_Z))
            self._blk_sum = float(arr.sum())
            self._blk_sumsq = float(np.dot(arr, arr))
            mean = float(arr.mean())
            sd = float(arr.std(ddof=1))
            sd = sd if sd > 1e-9 * max(1.0, abs(mean)) else max(1e-9, 1e-3 * abs(mean))
            z = np.clip((arr - mean) / sd, -Z_CLIP, Z_CLIP)
            # np.quantile's default (linear) method, without its ~0.15 ms of set-up.
            z.sort()
            index = np.arange(len(z), dtype=np.float64)
            quantiles = np.interp(_QUANTILE_POSITIONS * (len(z) - 1), index, z)
            self._shape = shape_table(quantiles, self._config.k)
        self._merge_block()  # the warm-up is the first block
        cfg = self._config
        if cfg.adwin:
            self._adwin = ADWIN(  # type: ignore[no-untyped-call]
                delta=adwin_delta(self.target_arl, self.kind), clock=cfg.adwin_clock
            )
            # river's ADWIN.update only resets a detector that has fired and then calls
            # its compiled window; a fired detector is replaced here, so the hot path
            # calls the window directly (pinned river version; tests cover detection
            # through this path).
            self._adwin_helper = self._adwin._helper

    def _merge_block(self) -> None:
        """Fold the quiet block into the reference and re-derive the thresholds."""
        self.ref_n += self._blk_n
        self._ref_sum += self._blk_sum
        self._ref_sumsq += self._blk_sumsq
        n = self.ref_n
        self._mean = mean = self._ref_sum / n
        if self._binary:
            self._raw_mean = mean
        else:
            self._raw_ref_sum += self._raw_blk_sum
            self._raw_ref_sumsq += self._raw_blk_sumsq
            self._raw_mean = self._raw_ref_sum / n
        rare_threshold = math.inf
        tails_on = False
        if self._binary:
            p = (self._ref_sum + 0.5) / (n + 1.0)
            sd = math.sqrt(p * (1.0 - p))
            self._z1, self._z0 = (1.0 - p) / sd, -p / sd
            ones = round(self._ref_sum)
            # ADWIN fires far less often on rare rates than its share of the budget
            # allows; Page-Hinkley gets the unused part (calibration.adwin_binary_rate_ratio),
            # shared on a rare rate with its likelihood-ratio CUSUM.
            threshold = ph_threshold_binary(
                ones,
                n,
                self._config.k,
                self.target_arl,
                adwin_share=self._config.adwin,
                rare_share=True,
            )
            rare_threshold = rare_threshold_binary(
                ones, n, self.target_arl, adwin_share=self._config.adwin
            )
            if rare_threshold < math.inf:
                self._rb_up, self._rb_down = rare_steps(ones, n)
                self._rb_minority = 1.0 if 2 * ones <= n else 0.0
        else:
            var = max((self._ref_sumsq - n * mean * mean) / max(n - 1, 1), 0.0)
            sd = math.sqrt(var) if var > 1e-18 else max(1e-9, 1e-3 * abs(mean))
            self._inv_sd = 1.0 / sd
            assert self._shape is not None
            ph_arl = self.target_arl
            if self._tl_hi_ref >= 0:
                self._tl_hi_ref += self._tl_hi_blk
                self._tl_lo_ref += self._tl_lo_blk
                up_h = tail_threshold(self._tl_hi_ref, n, self.target_arl)
                down_h = tail_threshold(self._tl_lo_ref, n, self.target_arl)
                self._tu_threshold, self._td_threshold = up_h, down_h
                self._tu_up, self._tu_down = tail_steps(self._tl_hi_ref, n)
                self._td_up, self._td_down = tail_steps(self._tl_lo_ref, n)
                if up_h < math.inf or down_h < math.inf:
                    tails_on = True
                    ph_arl = self.target_arl / (1.0 - TAIL_SHARE)
            threshold = ph_threshold_continuous(self._shape, self._config.k, n, ph_arl)
        self._blk_n = 0
        self._blk_sum = self._blk_sumsq = 0.0
        self._raw_blk_sum = self._raw_blk_sumsq = 0.0
        self._tl_hi_blk = self._tl_lo_blk = 0
        if self._config.page_hinkley:
            # A new test on the new reference (as a new river PageHinkley would be).
            self._ph_on = True
            self._ph_threshold = threshold
            self._rb_on = rare_threshold < math.inf
            self._rb_threshold = rare_threshold
            self._tl_on = tails_on
            self._ph_reset()

    # -- per event ------------------------------------------------------------------
    def update(self, x: float) -> Alarm | None:
        """Feed one value; returns the alarm if a detector fired on it."""
        # Hot path: one call per feature per event.
        self.n += 1
        if self._learning:
            cur = self.current
            self.current = x if cur != cur else cur + _EWMA * (x - cur)
            self._blk_n += 1
            self._blk_sum += x
            self._blk_sumsq += x * x
            warm = self._warm
            if warm is not None:
                warm.append(x)
            if self._blk_n >= self._warmup:
                self._finish_warmup()
            return None
        self.current += _EWMA * (x - self.current)
        if self._binary:
            if x >= 0.5:
                z, a_in = self._z1, 1.0
            else:
                z, a_in = self._z0, 0.0
        else:
            self._raw_blk_sum += x
            self._raw_blk_sumsq += x * x
            gx = self._gx
            if gx is not None:
                # The reference's normal scores (normal_scores), piecewise linear.
                gs: Any = self._gs
                if _COMPILED:
                    # bisect_right as a loop over the knots (C pointers: gx and gs are
                    # typed arrays in detectors.pxd; never run as plain Python).
                    px, ps = gx.data.as_doubles, gs.data.as_doubles  # type: ignore[attr-defined]
                    i, hi = 0, len(gx)
                    while i < hi:
                        mid = (i + hi) >> 1
                        if x < px[mid]:
                            hi = mid
                        else:
                            i = mid + 1
                    if i == 0:
                        x = ps[0]
                    elif i == len(gx):
                        x = ps[i - 1]
                    else:
                        lo = px[i - 1]
                        x = ps[i - 1] + (ps[i] - ps[i - 1]) * (x - lo) / (px[i] - lo)
                else:
                    i = _bisect(gx, x)
                    if i == 0:
                        x = gs[0]
                    elif i == len(gx):
                        x = gs[i - 1]
                    else:
                        lo = gx[i - 1]
                        x = gs[i - 1] + (gs[i] - gs[i - 1]) * (x - lo) / (gx[i] - lo)
                if x > _TZ:
                    self._tl_hi_blk += 1
                elif x < -_TZ:
                    self._tl_lo_blk += 1
            z = (x - self._mean) * self._inv_sd
            if z > _ZC:
                z = _ZC
            elif z < -_ZC:
                z = -_ZC
            a_in = 0.5 + 0.5 * math.erf(z * _INV_SQRT2)
            self._blk_sumsq += x * x
        self._blk_n += 1
        self._blk_sum += x
        if self._ph_on:
            # river's PageHinkley.update with alpha=1 and a frozen mean of 0, two-sided.
            self._ph_n += 1
            inc = self._ph_inc + z - self._ph_k
            dec = self._ph_dec + z + self._ph_k
            self._ph_inc = inc
            self._ph_dec = dec
            if inc < self._ph_min:
                self._ph_min = inc
                self._ph_argmin = self._ph_n
            if dec > self._ph_max:
                self._ph_max = dec
                self._ph_argmax = self._ph_n
            if inc - self._ph_min > self._ph_threshold:
                return self._alarm(
                    "page_hinkley",
                    self._ph_statistic(),
                    self._ph_threshold,
                    self._ph_n - self._ph_argmin,
                )
            if self._ph_max - dec > self._ph_threshold:
                return self._alarm(
                    "page_hinkley",
                    self._ph_statistic(),
                    self._ph_threshold,
                    self._ph_n - self._ph_argmax,
                )
            if self._rb_on:
                # The rare-rate CUSUM (calibration.rare_steps): one-sided, on the minority value.
                r = self._rb_s + (self._rb_up if a_in == self._rb_minority else -self._rb_down)
                if r <= 0.0:
                    r = 0.0
                    self._rb_zero_at = self._ph_n
                self._rb_s = r
                if r > self._rb_threshold:
                    return self._alarm(
                        "page_hinkley",
                        self._ph_statistic(),
                        self._ph_threshold,
                        self._ph_n - self._rb_zero_at,
                    )
            if self._tl_on:
                # The tail CUSUMs (calibration.tail_steps): exceedances of the normal scores'
                # 90th percentile, above and below.
                r = self._tu_s + (self._tu_up if x > _TZ else -self._tu_down)
                if r <= 0.0:
                    r = 0.0
                    self._tu_zero_at = self._ph_n
                self._tu_s = r
                lo = self._td_s + (self._td_up if x < -_TZ else -self._td_down)
                if lo <= 0.0:
                    lo = 0.0
                    self._td_zero_at = self._ph_n
                self._td_s = lo
                if r > self._tu_threshold or lo > self._td_threshold:
                    since = self._tu_zero_at if r > self._tu_threshold else self._td_zero_at
                    return self._alarm(
                        "page_hinkley",
                        self._ph_statistic(),
                        self._ph_threshold,
                        self._ph_n - since,
                    )
        helper = self._adwin_helper
        if helper is not None and helper.update(a_in):  # type: ignore[attr-defined]
            assert self._adwin is not None
            return self._alarm("adwin", math.nan, self._adwin.delta, self._cusum_onset())
        if self._blk_n >= self.ref_n:
            self._merge_block()
        return None

    def _cusum_onset(self) -> int:
        """Values since the change point the Page-Hinkley CUSUM estimates, in its larger
        direction; -1 without Page-Hinkley. (ADWIN's own window after a cut is no onset
        estimate: it sheds old buckets a few at a time, keeping hundreds of pre-change
        values.)"""
        if not self._ph_n:
            return -1
        up, down = self._ph_inc - self._ph_min, self._ph_max - self._ph_dec
        if self._rb_on and self._rare_statistic() > max(up, down):
            return int(self._ph_n - self._rb_zero_at)
        if self._tl_on and self._tail_statistic() > max(up, down):
            up_tail = self._tu_s / self._tu_threshold >= self._td_s / self._td_threshold
            return int(self._ph_n - (self._tu_zero_at if up_tail else self._td_zero_at))
        if up >= down:
            return int(self._ph_n - self._ph_argmin)
        return int(self._ph_n - self._ph_argmax)

    def _rare_statistic(self) -> float:
        """The rare-rate CUSUM on Page-Hinkley's scale: the same fraction of its threshold."""
        return float(self._rb_s / self._rb_threshold * self._ph_threshold)

    def _tail_statistic(self) -> float:
        """The larger tail CUSUM on Page-Hinkley's scale, as :meth:`_rare_statistic`."""
        return float(
            max(self._tu_s / self._tu_threshold, self._td_s / self._td_threshold)
            * self._ph_threshold
        )

    def _ph_statistic(self) -> float:
        """The larger of the upward and downward Page-Hinkley (CUSUM) values and, on a rare
        0/1 rate, of its likelihood-ratio CUSUM (on a continuous feature, of its tail
        CUSUMs) rescaled to the same threshold: one statistic that crosses the one
        threshold when the detector fires."""
        if not self._ph_n:
            return 0.0
        stat = max(self._ph_inc - self._ph_min, self._ph_max - self._ph_dec, 0.0)
        if self._rb_on:
            stat = max(stat, self._rare_statistic())
        if self._tl_on:
            stat = max(stat, self._tail_statistic())
        return float(stat)

    @property
    def events_since_detection(self) -> int:
        """Values seen since the last detection; -1 if there was none."""
        return -1 if self._detected_at < 0 else self.n - self._detected_at

    def _alarm(self, detector: str, statistic: float, threshold: float, since_onset: int) -> Alarm:
        alarm = Alarm(
            self.name, detector, self._raw_mean, self.current, statistic, threshold, since_onset
        )
        self._detected_at = self.n
        self.relearn()
        return alarm

    # -- persistence ----------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled field by field, so one snapshot restores in the compiled and in the
        plain-Python build alike (Cython's own pickling names build-specific helpers)."""
        return (_restore_stream, _get_state(self))

    def _set_state(self, state: tuple[Any, ...]) -> None:
        if len(state) == _FIELDS_BEFORE_ONSET:
            # Pickled before the onset estimate: no extremes known, so the estimate
            # counts from the start of the current test.
            state = (*state, 0, 0)
        if len(state) == _FIELDS_BEFORE_RARE:
            state = (*state, *_RARE_OFF)
        if len(state) == _FIELDS_BEFORE_SCORES:
            # Pickled before normal scores: raw values (identity transform) until the next
            # relearn; the raw sums are the sums.
            state = (*state, None, None, *(state[i] for i in _RAW_FROM))
        if len(state) == _FIELDS_BEFORE_TAILS:
            state = (*state, *_TAILS_OFF)
        # STATE_FIELDS in order, unpacked into the typed fields (a test checks the order): a
        # setattr loop over STATE_FIELDS restores a third slower in the compiled build.
        (
            self.name,
            self.kind,
            self.target_arl,
            self._config,
            self.n,
            self.current,
            self._detected_at,
            self._learning,
            self._warm,
            self._ph_on,
            self._ph_k,
            self._ph_threshold,
            self._ph_n,
            self._ph_inc,
            self._ph_dec,
            self._ph_min,
            self._ph_max,
            self._adwin,
            self.ref_n,
            self._mean,
            self._inv_sd,
            self._z0,
            self._z1,
            self._shape,
            self._blk_n,
            self._blk_sum,
            self._blk_sumsq,
            self._ref_sum,
            self._ref_sumsq,
            self._ph_argmin,
            self._ph_argmax,
            self._rb_on,
            self._rb_minority,
            self._rb_up,
            self._rb_down,
            self._rb_threshold,
            self._rb_s,
            self._rb_zero_at,
            self._gx,
            self._gs,
            self._raw_blk_sum,
            self._raw_blk_sumsq,
            self._raw_ref_sum,
            self._raw_ref_sumsq,
            self._raw_mean,
            self._tl_on,
            self._tl_hi_blk,
            self._tl_lo_blk,
            self._tl_hi_ref,
            self._tl_lo_ref,
            self._tu_up,
            self._tu_down,
            self._tu_threshold,
            self._tu_s,
            self._tu_zero_at,
            self._td_up,
            self._td_down,
            self._td_threshold,
            self._td_s,
            self._td_zero_at,
        ) = state
        self._warmup = self._config.warmup
        self._binary = self.kind == "binary"
        self._adwin_helper = None if self._adwin is None else self._adwin._helper
        gx, gs = self._gx, self._gs
        if (gx is None) != (gs is None) or (
            gx is not None and not (gx.typecode == gs.typecode == "d" and len(gx) == len(gs) > 0)
        ):
            # Compiled, update reads the map through C pointers: never a malformed one.
            raise ValueError(f"{self.name}: the snapshot's normal-score map is malformed")

    # -- display --------------------------------------------------------------------
    def statistics(self) -> dict[str, tuple[float, float]]:
        """detector → (statistic, threshold) for metrics; ADWIN reports its window width."""
        out: dict[str, tuple[float, float]] = {}
        if self._ph_on:
            out["page_hinkley"] = (self._ph_statistic(), float(self._ph_threshold))
        if self._adwin is not None:
            out["adwin"] = (float(self._adwin.width), float(self._adwin.delta))
        return out


def _restore_stream(*state: Any) -> FeatureStream:
    """Unpickles a :class:`FeatureStream` (see ``FeatureStream.__reduce__``)."""
    stream = FeatureStream.__new__(FeatureStream)
    stream._set_state(state)
    return stream


_NO_ALARMS: list[Alarm] = []  # shared "no alarms" result; never appended to


def update_streams(
    streams: dict[str, FeatureStream],
    features: dict[str, float],
    target_arl: float,
    config: DetectorConfig,
) -> list[Alarm]:
    """Feed one event's feature values to a key's streams, creating streams on first sight.

    Returns the alarms in feature order (a shared empty list when there are none: do not
    append to it).
    """
    found = _NO_ALARMS
    for name, value in features.items():
        stream = streams.get(name)
        if stream is None:
            stream = FeatureStream(name, feature_kind(name), target_arl, config)
            streams[name] = stream
        alarm = stream.update(value)
        if alarm is not None:
            if found is _NO_ALARMS:
                found = []
            found.append(alarm)
    return found
