"""Version transitions: every model change on an endpoint compared with the version it
replaced, as a behavioural changelog with a semver verdict.

A new model label on an endpoint is a new monitored key: its detectors start from
scratch and compare it only with itself. This module watches the *lineage* of each
endpoint instead. When the endpoint serves a version it has not served before (a new
``model``, or a new value of a configured version attribute such as OpenAI's
``system_fingerprint`` under one label), a :class:`Transition` opens from the version
that dominated the endpoint's recent traffic (preferring one served under the same
``requested_model`` alias) to the new one, and every scalar feature is compared:

* **concurrent** mode (both versions still serve: a canary or an A/B split): events of
  the two versions are paired as they arrive, oldest waiting first, within a *stratum*
  (the values of ``stratify_by`` attributes) so a canary on one user segment is compared
  with the same segment of the old version; a confidence sequence (CS) is kept for the
  mean paired difference;
* **snapshot** mode (the old version stopped): the new version's stream is compared with
  the old version's behavioural snapshot, taken from the reference its detectors learned
  (:meth:`driftmon.core.monitor.Monitor.profile`) plus any old events seen since.

The mode is the one most of the new version's events can be compared by: concurrent
while at least half of them found a partner. Intervals are anytime-valid
(:mod:`driftmon.core.sequential`) at level ``α/K`` for K features (Bonferroni), so the
changelog may be read after every event and all its intervals hold together with
probability ``1 − α``. Each mode's intervals are intersected over time, which makes
verdicts monotone; a transition that changes mode carries its verdicts over (then the
guarantee is ``2α``: two sequences were consulted).

Feature verdicts: ``collecting`` (fewer than ``min_events`` compared values, or an
interval that neither excludes zero nor fits in the equivalence margin), ``unchanged``
(the interval inside ±margin: 0.1 old standard deviations, 1 percentage point for
rates), ``changed`` (zero excluded), ``breaking`` (a contract or guard worse beyond its
tolerance with the whole interval beyond it). Verdicts are sticky; ``changed`` may still
become ``breaking``. The overall verdict is ``breaking`` if any feature is, else
``changed`` if any is, else ``unchanged`` if all are, else ``pending``; semver ``major``,
``minor``, ``patch``.

**Prompt-mix guard.** The inputs of the two versions (input length, input tokens, the
shares of ``prompt_version`` and stratification values) go through the same machinery
at a laxer level (``input_alpha``, a false alarm only withholds a verdict). When they
differ, the transition is ``confounded``: its overall verdict stays ``pending`` (the
outputs may differ because the prompts do) unless a feature is ``breaking``.

Cost: O(1) per event (a tuple of the event's features and a queue operation); the
statistics are folded in numpy every ``check_every`` new-version events. Nothing is
done for an endpoint without an open transition beyond counting its versions.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from statistics import NormalDist
from typing import Any, Final, Literal

import numpy as np

from driftmon.core.events import Event
from driftmon.core.registry import FEATURES, check_feature
from driftmon.core.sequential import Array, asymptotic_margin, beta_binomial_cs
from driftmon.core.units import unit

VERDICTS: Final = ("collecting", "unchanged", "changed", "breaking")
OVERALL: Final = ("pending", "unchanged", "changed", "breaking")
SEMVER: Final[dict[str, str | None]] = {
    "pending": None,
    "unchanged": "patch",
    "changed": "minor",
    "breaking": "major",
}
NAN: Final = math.nan
_RARE: Final = 0.05  # a rate below this (or above 1 - this) in the snapshot: exact CS
_SHRINK_EVENTS: Final = 30.0  # variance shrinkage towards the old version's, in events
_QUEUE: Final = 512  # events waiting for a partner, per stratum and side
_MAX_STRATA: Final = 64
_CATEGORIES_PER_ATTRIBUTE: Final = 4
_INPUT_NAMES: Final = ("input_chars", "input_tokens")

Direction = Literal["increase", "decrease", "either"]
Row = tuple[float, ...]  # one event's values, NaN where absent
Profile = tuple[int, dict[str, tuple[float, float, float]]]
"""A version's behavioural snapshot: its event count, and per feature ``(n, sum,
sum of squares)`` on the detectors' scale."""


@dataclass(frozen=True, slots=True)
class Guard:
    """A feature that breaks a transition when it moves beyond ``tolerance`` (in the
    feature's own unit: percentage points for rates, a ratio such as 1.5 for counts
    shown from a log scale, the value itself otherwise) in ``direction``."""

    direction: Direction
    tolerance: float


DEFAULT_GUARDS: Final = (
    ("refusal", Guard("increase", 2.0)),
    ("empty_output", Guard("increase", 1.0)),
    ("truncated", Guard("increase", 2.0)),
    ("feedback", Guard("decrease", 0.1)),
)


@dataclass(frozen=True, slots=True)
class TransitionConfig:
    """Plain settings (``driftmon.config.transition_config`` builds them)."""

    enabled: bool = True
    alpha: float = 0.01
    equivalence_sd: float = 0.1
    equivalence_points: float = 1.0
    min_events: int = 30
    stratify_by: tuple[str, ...] = ()
    version_attributes: tuple[str, ...] = (
        "system_fingerprint",
        "gen_ai.openai.response.system_fingerprint",
    )
    guards: tuple[tuple[str, Guard], ...] = DEFAULT_GUARDS
    contract_tolerance: float = 1.0  # percentage points
    max_events: int = 20_000
    max_transitions: int = 1000
    max_lineages: int = 10_000
    max_versions: int = 16  # per endpoint, least recently served forgotten first
    keep_closed: int = 200
    t_opt: float = 500.0  # events at which the CS is tightest
    # New-version events between statistics updates: an eighth of those seen so far,
    # within these bounds (verdicts come at most ~12 % late, and updates stay rare).
    check_min: int = 32
    check_max: int = 256
    # The prompt-mix check errs towards caution: its false alarms only withhold a verdict,
    # its misses let a mix change pass as a model change (docs/transitions.md).
    input_alpha: float = 0.2
    recent_events: float = 500.0  # memory of "recent traffic" for the dominant version


class _Spec:
    """Per-feature constants of one transition, as arrays over its K features."""

    __slots__ = (
        "eps",
        "guard_dir",
        "guard_tol",
        "log",
        "margin",
        "names",
        "rare",
        "rate",
        "t_old",
        "var_old",
    )

    def __init__(
        self,
        names: tuple[str, ...],
        old: tuple[Array, Array, Array],
        config: TransitionConfig,
        input_side: bool,
    ) -> None:
        self.names = names
        k = len(names)
        n0, s0, ss0 = old
        self.rate = np.array([_is_rate(f) for f in names], dtype=bool)
        self.log = np.array([_is_log(f) for f in names], dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean0 = np.where(n0 > 0, s0 / n0, NAN)
            var0 = np.where(n0 > 1, (ss0 - n0 * mean0 * mean0) / (n0 - 1), NAN)
            p = (s0 + 0.5) / (n0 + 1.0)
            var0 = np.where(self.rate, p * (1.0 - p), np.maximum(var0, 0.0))
        self.var_old = var0
        # The old side is mostly the snapshot: its CS is made tightest around its size.
        self.t_old = np.round(np.maximum(n0, 30.0), -1).astype(np.float64)
        # Differences below this are rounding, not change (constant features).
        self.eps = 1e-9 * np.maximum(1.0, np.abs(np.nan_to_num(mean0)))
        self.rare = self.rate & ((p < _RARE) | (p > 1.0 - _RARE) | (n0 < 100))
        with np.errstate(invalid="ignore"):
            sd0 = np.sqrt(var0)
        self.margin = np.where(
            self.rate, config.equivalence_points / 100.0, config.equivalence_sd * sd0
        )
        self.margin = np.where(np.isfinite(self.margin), self.margin, 0.0) + self.eps
        self.guard_dir = np.zeros(k, dtype=np.int8)  # 0 none, 1 up, -1 down, 2 either
        self.guard_tol = np.full(k, np.inf)
        if input_side:
            return
        guards = dict(config.guards)
        for i, name in enumerate(names):
            guard = guards.get(name)
            if guard is None and _is_contract(name):
                guard = Guard("decrease", config.contract_tolerance)
            if guard is None:
                continue
            self.guard_dir[i] = {"increase": 1, "decrease": -1, "either": 2}[guard.direction]
            if self.rate[i]:
                self.guard_tol[i] = guard.tolerance / 100.0
            elif self.log[i]:
                self.guard_tol[i] = math.log(max(guard.tolerance, 1.0 + 1e-9))
            else:
                self.guard_tol[i] = guard.tolerance


def _z(upper_tail: float) -> float:
    """The standard normal quantile with ``upper_tail`` above it."""
    return NormalDist().inv_cdf(1.0 - upper_tail)


def _is_rate(name: str) -> bool:
    registered = FEATURES.get(name)
    if name.startswith("input:"):
        return True
    if name in _INPUT_NAMES:
        return False
    return (registered or check_feature(name)).kind == "rate"


def _is_log(name: str) -> bool:
    registered = FEATURES.get(name)
    return name in _INPUT_NAMES or (registered is not None and registered.log_scale)


def _is_contract(name: str) -> bool:
    registered = FEATURES.get(name)
    return (registered or check_feature(name)).extractor == "contract"


class _Sums:
    """Running sums per feature: count, sum, sum of squares."""

    __slots__ = ("n", "s", "ss")

    def __init__(self, k: int) -> None:
        self.n = np.zeros(k)
        self.s = np.zeros(k)
        self.ss = np.zeros(k)

    def add(self, rows: Array) -> None:
        ok = ~np.isnan(rows)
        x = np.where(ok, rows, 0.0)
        self.n += ok.sum(axis=0)
        self.s += x.sum(axis=0)
        self.ss += (x * x).sum(axis=0)

    def mean(self) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.n > 0, self.s / self.n, NAN)

    def var(self) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            m = self.s / self.n
            return np.where(
                self.n > 1, np.maximum(self.ss - self.n * m * m, 0.0) / (self.n - 1), NAN
            )


class _Side:
    """The statistics of one comparison (outputs or inputs) of a transition."""

    __slots__ = (
        "alpha",
        "hi",
        "lo",
        "mode_lo",
        "new",
        "old",
        "old0",
        "p_d",
        "p_dd",
        "p_new",
        "p_old",
        "pn",
        "spec",
        "verdict",
        "verdict_at",
    )

    def __init__(self, spec: _Spec, alpha: float, old0: tuple[Array, Array, Array]) -> None:
        k = len(spec.names)
        self.spec = spec
        self.alpha = alpha
        self.old0 = old0  # the snapshot: n, sum, sum of squares
        self.new = _Sums(k)  # every new-version value since the transition opened
        self.old = _Sums(k)  # every old-version value since then
        self.pn = np.zeros(k)  # pairs: count, sums of new, old, difference, squared diff.
        self.p_new = np.zeros(k)
        self.p_old = np.zeros(k)
        self.p_d = np.zeros(k)
        self.p_dd = np.zeros(k)
        # Running intersections per mode: index 0 concurrent, 1 snapshot.
        self.lo = np.full((2, k), -np.inf)
        self.hi = np.full((2, k), np.inf)
        self.verdict = ["collecting"] * k
        self.verdict_at: list[int | None] = [None] * k
        self.mode_lo = 0

    def add(self, new_rows: Array | None, old_rows: Array | None, pairs: Array | None) -> None:
        if new_rows is not None:
            self.new.add(new_rows)
        if old_rows is not None:
            self.old.add(old_rows)
        if pairs is not None:  # shape (2, b, k): new, old
            a, b = pairs[0], pairs[1]
            d = a - b
            ok = ~np.isnan(d)
            a, b, d = np.where(ok, a, 0.0), np.where(ok, b, 0.0), np.where(ok, d, 0.0)
            self.pn += ok.sum(axis=0)
            self.p_new += a.sum(axis=0)
            self.p_old += b.sum(axis=0)
            self.p_d += d.sum(axis=0)
            self.p_dd += (d * d).sum(axis=0)

    def update_intervals(self, t_opt: float, mode: int) -> None:
        """Extend the running intersection of ``mode`` (0 concurrent, 1 snapshot) with the
        intervals at the current counts. Only the mode in use is computed: intersecting
        a sequence at fewer times still gives a valid sequence."""
        if mode == 0:
            self._concurrent(t_opt)
        else:
            self._snapshot(t_opt)

    def _concurrent(self, t_opt: float) -> None:
        """The paired differences: a CS for their mean, rates included.

        The plug-in variance of a rare rate is what makes an asymptotic sequence unsafe
        early; here it is shrunk towards twice the old version's rate variance (30
        pseudo-pairs), which kept false verdicts at the nominal level on real nulls
        (docs/transitions.md), while exact per-side sequences for rare rates took 2.5
        times as many events on gpt4-0314 → 0613 (bold text 1 % → 9 %). Snapshot
        comparisons keep the exact sequences (:meth:`_snapshot`)."""
        spec = self.spec
        a = self.alpha / max(len(spec.names), 1)
        n = self.pn
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_d = self.p_d / n
            var_d = np.maximum(self.p_dd - n * mean_d * mean_d, 0.0)
            prior = 2.0 * np.nan_to_num(spec.var_old, nan=0.0)
            var = (_SHRINK_EVENTS * prior + var_d) / (_SHRINK_EVENTS + n - 1.0)
        m = asymptotic_margin(n, var, a, t_opt)
        self._intersect(0, mean_d - m, mean_d + m, n)

    def _snapshot(self, t_opt: float) -> None:
        """The new stream against the old snapshot plus old values since: a CS for each
        side at α/2, their difference."""
        spec = self.spec
        a = self.alpha / max(len(spec.names), 1)
        rare = spec.rare
        n0, s0, ss0 = self.old0
        on, os_, oss = n0 + self.old.n, s0 + self.old.s, ss0 + self.old.ss
        nn = self.new.n
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_n = self.new.s / nn
            var_n = np.maximum(self.new.ss - nn * mean_n * mean_n, 0.0)
            prior = np.nan_to_num(spec.var_old, nan=0.0)
            var_n = (_SHRINK_EVENTS * prior + var_n) / (_SHRINK_EVENTS + nn - 1.0)
            mean_o = os_ / on
            var_o = np.maximum(oss - on * mean_o * mean_o, 0.0) / (on - 1.0)
        m_n = asymptotic_margin(nn, var_n, a / 2.0, t_opt)
        # The snapshot alone is one fixed sample: a fixed-size interval holds for it. Once
        # old values arrive after the opening, the old side grows: a sequence, tightest
        # around the snapshot's size.
        # The two old-side intervals share its α/2, so that consulting both (the fixed one
        # first, the sequence once the old side grows) stays within it.
        with np.errstate(divide="ignore", invalid="ignore"):
            fixed = _z(a / 8.0) * np.sqrt(var_o / on)
        m_o = np.where(self.old.n == 0, fixed, asymptotic_margin(on, var_o, a / 4.0, spec.t_old))
        lo, hi = (mean_n - m_n) - (mean_o + m_o), (mean_n + m_n) - (mean_o - m_o)
        if rare.any():
            r = int(rare.sum())
            ones = np.concatenate((self.new.s[rare], os_[rare]))
            b_lo, b_hi = beta_binomial_cs(ones, np.concatenate((nn[rare], on[rare])), a / 2.0)
            lo[rare] = b_lo[:r] - b_hi[r:]
            hi[rare] = b_hi[:r] - b_lo[r:]
        self._intersect(1, lo, hi, np.minimum(nn, on))

    def _intersect(self, mode: int, lo: Array, hi: Array, n: Array) -> None:
        lo = np.where(np.isnan(lo) | (n < 2), -np.inf, lo)
        hi = np.where(np.isnan(hi) | (n < 2), np.inf, hi)
        np.maximum(self.lo[mode], lo, out=self.lo[mode])
        np.minimum(self.hi[mode], hi, out=self.hi[mode])

    def compared(self, mode: int) -> Array:
        """Values compared per feature in ``mode``: pairs, or new values."""
        return self.pn if mode == 0 else self.new.n

    def decide(self, mode: int, min_events: int, at: int) -> None:
        spec = self.spec
        lo, hi = self.lo[mode], self.hi[mode]
        n = self.compared(mode)
        for i in range(len(spec.names)):
            before = self.verdict[i]
            if before in ("unchanged", "breaking") or n[i] < min_events:
                continue
            low, h = lo[i], hi[i]
            if low > h:  # crossed intervals: the sequences disagree, i.e. a miss happened
                continue
            g, tol = spec.guard_dir[i], spec.guard_tol[i]
            breaking = (g in (1, 2) and low > tol) or (g in (-1, 2) and h < -tol)
            if breaking:
                verdict = "breaking"
            elif before == "changed":
                continue
            elif -spec.margin[i] <= low and h <= spec.margin[i]:
                verdict = "unchanged"
            elif low > spec.eps[i] or h < -spec.eps[i]:
                verdict = "changed"
            else:
                continue
            self.verdict[i] = verdict
            self.verdict_at[i] = at

    def interval(self, mode: int, i: int) -> tuple[float, float]:
        return float(self.lo[mode][i]), float(self.hi[mode][i])


class Transition:
    """One model change on one endpoint, with its running changelog."""

    def __init__(
        self,
        number: int,
        endpoint: str,
        from_version: str,
        to_version: str,
        trigger: str,
        requested_model: str | None,
        names: tuple[str, ...],
        old_profile: Profile,
        old_inputs: _InputStats | None,
        config: TransitionConfig,
        timestamp: float | None,
        stratify_by: tuple[str, ...],
    ) -> None:
        self.number = number
        self.endpoint = endpoint
        self.from_version = from_version
        self.to_version = to_version
        self.trigger = trigger
        self.requested_model = requested_model
        self.alpha = config.alpha
        self.min_events = config.min_events
        self.max_events = config.max_events
        self.check_min, self.check_max = config.check_min, config.check_max
        self._next_check = config.check_min
        self.t_opt = config.t_opt
        self.stratify_by = stratify_by
        self.opened_at = timestamp
        self.updated_at = timestamp
        self.closed = False
        self.old_events_before, stats = old_profile
        old = _arrays(names, stats)
        self.output = _Side(_Spec(names, old, config, False), config.alpha, old)
        in_names, in_old = (old_inputs or _InputStats()).snapshot()
        self.input_names = in_names
        self._category_index = {
            name.split(":", 1)[1]: i for i, name in enumerate(in_names) if name.startswith("input:")
        }
        self.input = _Side(_Spec(in_names, in_old, config, True), config.input_alpha, in_old)
        self._nans = tuple(repeat(NAN, len(names)))  # the default of absent features
        self.new_events = 0
        self.old_events = 0
        self.paired_events = 0
        self.verdict = "pending"
        self.new_events_at_verdict: int | None = None
        self.confounded = False
        self.mode = "snapshot"
        self._new_rows: list[tuple[Row, Row]] = []
        self._old_rows: list[tuple[Row, Row]] = []
        self._pairs: list[tuple[Row, ...]] = []
        self._waiting: dict[Any, tuple[deque[Any], deque[Any]]] = {}

    # -- per event ------------------------------------------------------------------
    def observe(self, new: bool, event: Event, features: Mapping[str, float]) -> None:
        row = tuple(map(features.get, self.output.spec.names, self._nans))
        inputs = self._input_row(event) if self.input_names else ()
        completion = event.kind == "completion"
        if new:
            self._new_rows.append((row, inputs))
            if completion:
                self.new_events += 1
        else:
            self._old_rows.append((row, inputs))
            if completion:
                self.old_events += 1
        stratum: Any = event.kind
        if self.stratify_by:
            attrs = event.attributes or {}
            stratum = (event.kind, *(str(attrs.get(a)) for a in self.stratify_by))
        queues = self._waiting.get(stratum)
        if queues is None:
            if len(self._waiting) >= _MAX_STRATA:
                stratum = (event.kind, "other")
                queues = self._waiting.get(stratum)
            if queues is None:
                queues = self._waiting[stratum] = (deque(maxlen=_QUEUE), deque(maxlen=_QUEUE))
        mine, theirs = (queues[0], queues[1]) if new else (queues[1], queues[0])
        if theirs:
            other = theirs.popleft()
            if new:
                self._pairs.append((row, other[0], inputs, other[1]))
            else:
                self._pairs.append((other[0], row, other[1], inputs))
            if completion:
                self.paired_events += 1
        else:
            mine.append((row, inputs))

    def observe_pair(
        self,
        old_event: Event,
        old_features: Mapping[str, float],
        new_event: Event,
        new_features: Mapping[str, float],
    ) -> None:
        """Feed a known pair: the old and the new version's answers to the same prompt
        (``driftmon compare`` pairs a golden set by ``id``). Paired differences on the
        same prompt remove the prompt's own variance: far fewer events are needed."""
        names = self.output.spec.names
        new_row = tuple(map(new_features.get, names, self._nans))
        old_row = tuple(map(old_features.get, names, self._nans))
        new_in, old_in = self._input_row(new_event), self._input_row(old_event)
        self._new_rows.append((new_row, new_in))
        self._old_rows.append((old_row, old_in))
        self._pairs.append((new_row, old_row, new_in, old_in))
        if new_event.kind == "completion":
            self.new_events += 1
            self.old_events += 1
            self.paired_events += 1

    def _input_row(self, event: Event) -> Row:
        n = len(self.input_names)
        if n == 0:
            return ()
        row = [NAN] * n
        if event.input is not None:
            row[0] = math.log1p(len(event.input))
        if event.input_tokens is not None:
            row[1] = math.log1p(event.input_tokens)
        if n > 2:
            for attr, value in _categories(event, self.stratify_by):
                for name, i in self._category_index.items():
                    if name.startswith(attr + "="):
                        row[i] = 1.0 if name == f"{attr}={value}" else 0.0
        return tuple(row)

    def due(self) -> bool:
        return len(self._new_rows) >= self._next_check

    # -- statistics -----------------------------------------------------------------
    def update(self, timestamp: float | None = None) -> bool:
        """Fold the waiting rows into the statistics and re-derive the verdicts; True when
        the overall verdict (or the confounding flag, or the mode) changed."""
        new, old, pairs = self._new_rows, self._old_rows, self._pairs
        self._new_rows, self._old_rows, self._pairs = [], [], []
        k_out, k_in = len(self.output.spec.names), len(self.input_names)
        self.output.add(
            _rows([r[0] for r in new], k_out),
            _rows([r[0] for r in old], k_out),
            _pair_rows([(p[0], p[1]) for p in pairs], k_out),
        )
        if k_in:
            self.input.add(
                _rows([r[1] for r in new], k_in),
                _rows([r[1] for r in old], k_in),
                _pair_rows([(p[2], p[3]) for p in pairs], k_in),
            )
        before = (self.verdict, self.confounded, self.mode)
        self._next_check = min(self.check_max, max(self.check_min, self.new_events // 8))
        mode = 0 if self.paired_events * 2 >= self.new_events and self.paired_events else 1
        self.mode = ("concurrent", "snapshot")[mode]
        self.output.update_intervals(self.t_opt, mode)
        self.output.decide(mode, self.min_events, self.new_events)
        if k_in:
            self.input.update_intervals(self.t_opt, mode)
            self.input.decide(mode, self.min_events, self.new_events)
            self.confounded = any(v in ("changed", "breaking") for v in self.input.verdict)
        # Features with no value on either side (an endpoint that never reports latency
        # or feedback) have nothing to decide: they do not hold back `unchanged`.
        out = self.output
        seen = ((out.compared(mode) > 0) | (out.old0[0] + out.old.n > 0)).tolist()
        verdicts = [v for v, s in zip(out.verdict, seen, strict=True) if s]
        guards = [g for g, s in zip(out.spec.guard_dir.tolist(), seen, strict=True) if s]
        if "breaking" in verdicts:
            verdict = "breaking"
        elif self.confounded:
            verdict = "pending"
        elif "changed" in verdicts:
            verdict = "changed"
        elif verdicts and all(v == "unchanged" for v in verdicts):
            verdict = "unchanged"
        else:
            verdict = "pending"
        if verdict == "pending":
            self.new_events_at_verdict = None  # (again: a verdict withdrawn as confounded)
        elif self.verdict == "pending":
            self.new_events_at_verdict = self.new_events
        self.verdict = verdict
        self.updated_at = timestamp if timestamp is not None else self.updated_at
        terminal = all(
            v in ("unchanged", "breaking") or (v == "changed" and g == 0)
            for v, g in zip(verdicts, guards, strict=True)
        )
        if k_in:
            # Not while the inputs are undecided: a prompt-mix difference found later
            # would withdraw the verdict, and a closed transition no longer sees it.
            seen_in = ((self.input.compared(mode) > 0) | (self.input.old0[0] > 0)).tolist()
            terminal = terminal and all(
                v != "collecting" for v, s in zip(self.input.verdict, seen_in, strict=True) if s
            )
        if self.new_events >= self.max_events or (terminal and not self.confounded):
            self.closed = True
        return (self.verdict, self.confounded, self.mode) != before or self.closed

    # -- reading --------------------------------------------------------------------
    @property
    def semver(self) -> str | None:
        return SEMVER[self.verdict]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.endpoint, self.from_version, self.to_version)

    def features(self) -> list[dict[str, Any]]:
        """Per feature: before, after, delta, interval and effect size in its own unit."""
        return _feature_rows(self.output, 0 if self.mode == "concurrent" else 1)

    def report(self) -> dict[str, Any]:
        """The SPEC §7 transition object (plus ``requested_model``, ``trigger``, ``input``,
        ``paired_events``, ``closed``, ``opened_at``, ``updated_at``)."""
        return {
            "endpoint": self.endpoint,
            "from_model": self.from_version,
            "to_model": self.to_version,
            "requested_model": self.requested_model,
            "trigger": self.trigger,
            "mode": self.mode,
            "verdict": self.verdict,
            "semver": self.semver,
            "confounded": self.confounded,
            "alpha": self.alpha,
            "old_events": self.old_events_before + self.old_events,
            "new_events": self.new_events,
            "paired_events": self.paired_events,
            "new_events_at_verdict": self.new_events_at_verdict,
            "closed": self.closed,
            "opened_at": self.opened_at,
            "updated_at": self.updated_at,
            "features": self.features(),
            "input": _feature_rows(self.input, 0 if self.mode == "concurrent" else 1),
        }

    def summary(self, top: int = 3) -> str:
        """One line for alert descriptions: the verdict and the largest changes."""
        rows = [r for r in self.features() if r["verdict"] in ("changed", "breaking")]
        rows.sort(key=lambda r: (r["verdict"] != "breaking", -abs(r["effect_size"] or 0.0)))
        head = f"{self.from_version} → {self.to_version}: {self.verdict}"
        if self.semver:
            head += f" ({self.semver})"
        if self.confounded:
            head += ", confounded: the two versions see different inputs"
        parts = [_describe(r) for r in rows[:top]]
        more = len(rows) - top
        tail = f"; {'; '.join(parts)}" if parts else ""
        if more > 0:
            tail += f"; and {more} more"
        return f"{head} after {self.new_events} new-version events{tail}"


def _describe(row: dict[str, Any]) -> str:
    u = row["unit"]
    if u == "%":
        return (
            f"{row['feature']} {row['before']:.1f}% → {row['after']:.1f}% "
            f"({row['delta']:+.1f} pp) {row['verdict']}"
        )
    return (
        f"{row['feature']} {_g(row['before'])} → {_g(row['after'])} {u} "
        f"(d={row['effect_size']:+.2f}) {row['verdict']}"
        if row["effect_size"] is not None
        else f"{row['feature']} {_g(row['before'])} → {_g(row['after'])} {u} {row['verdict']}"
    )


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _finite(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def _feature_rows(side: _Side, mode: int) -> list[dict[str, Any]]:
    spec = side.spec
    n0, s0, _ = side.old0
    rows = []
    if mode == 0:
        n = side.pn
        with np.errstate(divide="ignore", invalid="ignore"):
            before, after = side.p_old / n, side.p_new / n
    else:
        on = n0 + side.old.n
        with np.errstate(divide="ignore", invalid="ignore"):
            before = (s0 + side.old.s) / on
            after = side.new.mean()
        n = side.new.n
    for i, name in enumerate(spec.names):
        b, a = float(before[i]), float(after[i])
        lo, hi = side.interval(mode, i)
        var_old = float(spec.var_old[i])
        # A (nearly) constant old feature has no scale: no effect size, only the change.
        sd = math.sqrt(var_old) if var_old > (1e-6 * max(1.0, abs(b))) ** 2 else NAN
        if spec.rate[i]:
            scale = 100.0
            b_d, a_d = b * scale, a * scale
            ci = (lo * scale, hi * scale)
            effect = (a - b) * scale
        elif spec.log[i]:
            b_d, a_d = math.expm1(b), math.expm1(a)
            base = 1.0 + b_d
            ci = (
                base * math.expm1(lo) if lo > -50 else -base,
                base * math.expm1(hi) if hi < 50 else math.inf,
            )
            effect = (a - b) / sd if sd > 0 else NAN
        else:
            b_d, a_d = b, a
            ci = (lo, hi)
            effect = (a - b) / sd if sd > 0 else NAN
        rows.append(
            {
                "feature": name,
                "unit": _unit(name),
                "before": _finite(b_d),
                "after": _finite(a_d),
                "delta": _finite(a_d - b_d),
                "ci": [_finite(ci[0]), _finite(ci[1])],
                "effect_size": _finite(effect),
                "n": int(n[i]),
                "verdict": side.verdict[i],
                "verdict_at": side.verdict_at[i],
            }
        )
    return rows


def _unit(name: str) -> str:
    if name.startswith("input:"):
        return "%"
    if name == "input_chars":
        return "characters"
    if name == "input_tokens":
        return "tokens"
    return unit(name)


def _rows(rows: list[Row], k: int) -> Array | None:
    if not rows:
        return None
    return np.array(rows, dtype=np.float64).reshape(len(rows), k)


def _pair_rows(pairs: list[tuple[Row, Row]], k: int) -> Array | None:
    if not pairs:
        return None
    return np.array(pairs, dtype=np.float64).reshape(len(pairs), 2, k).transpose(1, 0, 2)


def _arrays(
    names: Iterable[str], stats: Mapping[str, tuple[float, float, float]]
) -> tuple[Array, Array, Array]:
    triples = [stats.get(f, (0.0, 0.0, 0.0)) for f in names]
    arr = np.array(triples, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()


def _categories(event: Event, stratify_by: tuple[str, ...]) -> Iterable[tuple[str, str]]:
    if event.prompt_version is not None:
        yield "prompt_version", event.prompt_version
    attrs = event.attributes
    if attrs:
        for a in stratify_by:
            v = attrs.get(a)
            if v is not None:
                yield a, str(v)[:64]


class _InputStats:
    """What a version's inputs looked like: input length and tokens (log scale) and the
    shares of the categories the prompt-mix check compares."""

    __slots__ = ("categories", "seen", "sums")

    def __init__(self) -> None:
        self.sums = [0.0] * 6  # n, s, ss for input_chars, then for input_tokens
        self.categories: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()  # events carrying each attribute

    def add(self, event: Event, stratify_by: tuple[str, ...]) -> None:
        s = self.sums
        if event.input is not None:
            x = math.log1p(len(event.input))
            s[0] += 1.0
            s[1] += x
            s[2] += x * x
        if event.input_tokens is not None:
            x = math.log1p(event.input_tokens)
            s[3] += 1.0
            s[4] += x
            s[5] += x * x
        for attr, value in _categories(event, stratify_by):
            self.seen[attr] += 1
            name = f"{attr}={value}"
            if name in self.categories or len(self.categories) < 256:
                self.categories[name] += 1

    def snapshot(self) -> tuple[tuple[str, ...], tuple[Array, Array, Array]]:
        """Input-side feature names and their snapshot sums (empty without inputs)."""
        s = self.sums
        if not (s[0] or s[3] or self.categories):
            return (), (np.zeros(0), np.zeros(0), np.zeros(0))
        names = list(_INPUT_NAMES)
        n, su, ss = [s[0], s[3]], [s[1], s[4]], [s[2], s[5]]
        per_attr: dict[str, int] = {}
        for name, count in self.categories.most_common():
            attr = name.split("=", 1)[0]
            if per_attr.get(attr, 0) >= _CATEGORIES_PER_ATTRIBUTE:
                continue
            per_attr[attr] = per_attr.get(attr, 0) + 1
            names.append(f"input:{name}")
            total = float(self.seen[attr])
            n.append(total)
            su.append(float(count))
            ss.append(float(count))
        return tuple(names), (np.array(n), np.array(su), np.array(ss))


@dataclass(slots=True)
class _Version:
    model: str
    alias: str | None
    events: int = 0
    last: int = 0  # the lineage's event count when last served
    score: float = 0.0  # exponentially decayed count of recent events
    inputs: _InputStats = field(default_factory=_InputStats)


class _Lineage:
    __slots__ = ("n", "open", "versions")

    def __init__(self) -> None:
        self.n = 0
        self.versions: OrderedDict[str, _Version] = OrderedDict()
        self.open: list[Transition] = []


class TransitionTracker:
    """The lineage of every endpoint and its open transitions (see the module doc).

    :meth:`observe` is called with every accepted event after its features; it returns
    the transitions whose verdict, confounding flag or mode changed on that event (the
    daemon publishes them). ``profile(endpoint, model)`` gives a version's behavioural
    snapshot when a transition opens (:meth:`driftmon.core.monitor.Monitor.profile`),
    ``feature_names(endpoint)`` the features the endpoint can produce (for Bonferroni).
    """

    def __init__(self, config: TransitionConfig) -> None:
        self.config = config
        self._lineages: OrderedDict[str, _Lineage] = OrderedDict()
        self.closed: deque[Transition] = deque(maxlen=config.keep_closed)
        self.refused: Counter[str] = Counter()
        self.opened = 0
        self._open_count = 0
        self._numbers = 0
        # Changed since the last drain_changed(), by number (insertion-ordered).
        self._dirty: dict[int, Transition] = {}

    def observe(
        self,
        event: Event,
        features: Mapping[str, float],
        timestamp: float | None,
        profile: Callable[[str, str], Profile | None],
        feature_names: Callable[[str], tuple[str, ...]],
    ) -> list[Transition]:
        config = self.config
        lineages = self._lineages
        lineage = lineages.get(event.endpoint)
        if lineage is None:
            lineage = lineages[event.endpoint] = _Lineage()
            while len(lineages) > config.max_lineages:
                _, gone = lineages.popitem(last=False)
                for t in gone.open:
                    self._close(t)
        else:
            lineages.move_to_end(event.endpoint)
        version_id = event.model
        fingerprint = None
        attrs = event.attributes
        if attrs and config.version_attributes:
            for a in config.version_attributes:
                value = attrs.get(a)
                if value is not None:
                    fingerprint = str(value)[:128]
                    version_id = f"{event.model}@{fingerprint}"
                    break
        versions = lineage.versions
        version = versions.get(version_id)
        changed: list[Transition] = []
        if event.kind == "completion":
            # Versions are known by their answers: feedback for a version not yet seen
            # (it may arrive first) neither opens a transition nor counts as serving.
            n = lineage.n = lineage.n + 1
            if version is None:
                version = _Version(event.model, event.requested_model)
                if versions:
                    opened = self._open(
                        lineage, event, version_id, fingerprint, timestamp, profile, feature_names
                    )
                    if opened is not None:
                        changed.append(opened)
                versions[version_id] = version
                while len(versions) > config.max_versions:
                    versions.popitem(last=False)
            else:
                versions.move_to_end(version_id)
            version.score = (
                version.score * math.exp((version.last - n) / config.recent_events) + 1.0
            )
            version.last = n
            version.events += 1
            if event.requested_model is not None:
                version.alias = event.requested_model
            if (
                event.input is not None
                or event.input_tokens is not None
                or event.prompt_version is not None
                or (attrs and config.stratify_by)
            ):
                version.inputs.add(event, config.stratify_by)
        if lineage.open:
            for t in lineage.open:
                if version_id == t.to_version:
                    t.observe(True, event, features)
                elif version_id == t.from_version:
                    t.observe(False, event, features)
                else:
                    continue
                due = len(t._new_rows) >= t._next_check
                if due and t.update(timestamp) and t not in changed:
                    changed.append(t)
            for t in changed:
                if t.closed and t in lineage.open:
                    self._close(t, lineage)
        for t in changed:
            self._dirty[t.number] = t
        return changed

    def _open(
        self,
        lineage: _Lineage,
        event: Event,
        version_id: str,
        fingerprint: str | None,
        timestamp: float | None,
        profile: Callable[[str, str], Profile | None],
        feature_names: Callable[[str], tuple[str, ...]],
    ) -> Transition | None:
        config = self.config
        candidates = list(lineage.versions.items())
        same_alias = [
            (vid, v)
            for vid, v in candidates
            if event.requested_model is not None and v.alias == event.requested_model
        ]
        pool = same_alias or candidates

        def recent(item: tuple[str, _Version]) -> float:
            v = item[1]
            return v.score * math.exp((v.last - lineage.n) / config.recent_events)

        old_id, old = max(pool, key=recent)
        if old.events < config.min_events:
            self.refused["no_baseline"] += 1
            return None
        if self._open_count >= config.max_transitions:
            self.refused["limit"] += 1
            return None
        if old.model == event.model and fingerprint is not None:
            trigger = "version_attribute"
        elif same_alias:
            trigger = "alias"
        else:
            trigger = "model"
        snap = profile(event.endpoint, old.model) or (old.events, {})
        names = tuple(
            n for n in feature_names(event.endpoint) if n not in ("embedding_distance", "embedding")
        )
        self._numbers += 1
        t = Transition(
            self._numbers,
            event.endpoint,
            old_id,
            version_id,
            trigger,
            event.requested_model,
            names,
            (old.events, snap[1]),
            old.inputs,
            config,
            timestamp,
            config.stratify_by,
        )
        lineage.open.append(t)
        self._open_count += 1
        self.opened += 1
        return t

    def _close(self, t: Transition, lineage: _Lineage | None = None) -> None:
        t.closed = True
        self._dirty[t.number] = t
        if lineage is not None and t in lineage.open:
            lineage.open.remove(t)
        self._open_count -= 1
        self.closed.append(t)

    def flush(self, timestamp: float | None = None) -> list[Transition]:
        """Fold every waiting event into the statistics (end of a replay, before a report
        or a checkpoint); returns the transitions whose verdict changed."""
        out = []
        for lineage in self._lineages.values():
            for t in lineage.open:
                if (t._new_rows or t._old_rows or t._pairs) and t.update(timestamp):
                    out.append(t)
                    self._dirty[t.number] = t
            for t in [t for t in lineage.open if t.closed]:
                self._close(t, lineage)
        return out

    def open_transitions(self) -> list[Transition]:
        return [t for lineage in self._lineages.values() for t in lineage.open]

    def transitions(self) -> list[Transition]:
        """Closed (oldest first, the last ``keep_closed``) then open ones."""
        return [*self.closed, *self.open_transitions()]

    def adopt_config(self, config: TransitionConfig) -> None:
        """Use ``config`` for transitions opened from now on (after a restore: open ones
        keep the level and margins they were opened with)."""
        self.config = config
        if self.closed.maxlen != config.keep_closed:
            self.closed = deque(self.closed, maxlen=config.keep_closed)

    def drain_changed(self) -> list[Transition]:
        """Transitions whose reported state changed (or that opened or closed) since the
        last call, in the order they first changed; the cost is in the changes only."""
        out = list(self._dirty.values())
        self._dirty.clear()
        return out
