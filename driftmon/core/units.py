"""Each feature in its own unit, for people: characters, tokens, milliseconds, percent.

The detectors watch counts on a log scale (``log1p``: a doubling is the same step at 200
and at 2 000 characters) and 0/1 features as rates. Those internal values are what the
statistics need and what nobody reads well: ``output_chars 5.997 → 6.263`` is an answer
going from about 400 to about 525 characters. Everything shown to a person — the replay
table, the live view, alert descriptions, the value and baseline gauges — goes through
:func:`to_display` here.

A mean of ``log1p(x)`` maps back through ``expm1`` to a *typical* value: the geometric
mean of ``x + 1``, minus one. It is below the arithmetic mean for skewed counts (the
median-like centre, not pulled up by a few very long answers); the docs call it that.
"""

from __future__ import annotations

import math
from typing import Final

from driftmon.core.registry import FEATURES, RATE_UNIT

# Snapshots of the registry (driftmon.core.registry) for readers of the tables; the
# functions below read the registry itself.
LOG_FEATURES: Final = {f.name: f.unit for f in FEATURES.values() if f.log_scale}
"""Fed to the detectors as log1p(count): shown as the count, in these units."""
PLAIN_FEATURES: Final = {
    f.name: f.unit for f in FEATURES.values() if f.kind == "continuous" and not f.log_scale
}
"""Fed as they are."""


def unit(feature: str) -> str:
    """The unit a feature's values are shown in; a named contract check is a rate (%)."""
    registered = FEATURES.get(feature)
    return RATE_UNIT if registered is None else registered.unit


def _log_scale(feature: str) -> bool:
    registered = FEATURES.get(feature)
    return registered is not None and registered.log_scale


def to_display(feature: str, value: float) -> float:
    """An internal value (a log1p mean, a 0/1 rate, …) in the feature's own unit.

    ``embedding_distance`` values arrive already as distances (the monitor maps its normal
    scores back); NaN stays NaN.
    """
    if math.isnan(value):
        return value
    if _log_scale(feature):
        return math.expm1(value)
    if unit(feature) != RATE_UNIT:
        return value
    return 100.0 * value


def format_value(feature: str, value: float) -> str:
    """``to_display``'s value with its unit, rounded for reading: ``'412 characters'``,
    ``'12.5 %'``, ``'0.42 score'``. Takes a value already in display units."""
    if math.isnan(value):
        return "n/a"
    u = unit(feature)
    if u == "%":
        return f"{value:.1f} %"
    if _log_scale(feature):
        return f"{value:,.1f} {u}" if abs(value) < 10 else f"{value:,.0f} {u}"
    return f"{value:.3g} {u}" if abs(value) < 100 else f"{value:,.0f} {u}"


def describe_change(feature: str, baseline: float, current: float) -> str:
    """Baseline → current for people, both in display units:
    ``'typical 412 characters → 1,030 characters'``, ``'rate 2.0 % → 9.5 %'``.

    Counts on the log scale are *typical* values (see the module docstring), 0/1 features
    rates; the MEWMA detection on whole embeddings shows its statistic against its
    threshold.

    >>> describe_change("output_chars", to_display("output_chars", 6.024), 1030.4)
    'typical 412 characters → 1,030 characters'
    >>> describe_change("refusal", 2.0, 9.53)
    'rate 2.0 % → 9.5 %'
    """
    if feature == "embedding":
        return f"statistic {current:.3g} over threshold {baseline:.3g}"
    if _log_scale(feature) or feature == "embedding_distance":
        word = "typical"
    elif unit(feature) == "%":
        word = "rate"
    else:
        word = "mean"
    return f"{word} {format_value(feature, baseline)} → {format_value(feature, current)}"
