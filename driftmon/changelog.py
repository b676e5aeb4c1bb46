"""The behavioural changelog of model transitions, in Markdown for release notes.

Input: transition objects as the replay report (``transitions``), ``driftmon compare
--report`` and the daemon's ``GET /transitions`` carry them (SPEC §7). Values are in each
feature's own unit; intervals are the anytime-valid ones, simultaneous over all features
of a transition at ``1 − alpha``.

>>> print(render([]))
No model transitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

_ORDER = {"breaking": 0, "changed": 1, "unchanged": 2, "collecting": 3}


def render(transitions: Iterable[Mapping[str, Any]]) -> str:
    """Markdown for every transition, newest last."""
    parts = [_one(t) for t in transitions]
    return "\n\n".join(parts) if parts else "No model transitions."


def one_line(t: Mapping[str, Any]) -> str:
    """``endpoint: old → new  verdict (semver)`` and the largest changes, for summaries."""
    verdict = t.get("verdict", "pending")
    semver = f" ({t['semver']})" if t.get("semver") else ""
    confounded = ", confounded" if t.get("confounded") else ""
    head = f"{t.get('endpoint')}: {t.get('from_model')} → {t.get('to_model')}  {verdict}{semver}"
    at = t.get("new_events_at_verdict")
    seen = f"{t.get('new_events')} new-version events, {t.get('mode')} mode{confounded}"
    if at is not None:
        seen = f"after {at} of {seen}"
    changed = sorted(
        (f for f in t.get("features") or [] if f.get("verdict") in ("breaking", "changed")),
        key=lambda f: (_ORDER[f["verdict"]], -abs(f.get("effect_size") or 0.0)),
    )
    top = ", ".join(
        f"{f['feature']} {_signed(f.get('delta'), ' pp' if f.get('unit') == '%' else '')}"
        for f in changed[:3]
    )
    return f"{head}  [{seen}]" + (f"  {top}" if top else "")


def _one(t: Mapping[str, Any]) -> str:
    verdict = t.get("verdict", "pending")
    semver = t.get("semver")
    head = f"## {t.get('endpoint')}: {t.get('from_model')} → {t.get('to_model')} — {verdict}"
    if semver:
        head += f" ({semver})"
    alpha = float(t.get("alpha") or 0.01)
    features = list(t.get("features") or [])
    lines = [head, ""]
    at = t.get("new_events_at_verdict")
    when = f"; verdict reached after {at} new-version events" if at is not None else ""
    lines.append(
        f"Compared in {t.get('mode')} mode on {t.get('new_events')} new-version events "
        f"(old version: {t.get('old_events')} events){when}. Intervals hold together for all "
        f"{len(features)} features at {100 * (1 - alpha):g} %, however often this is read."
    )
    if t.get("confounded"):
        lines += [
            "",
            "**Confounded:** the two versions see different inputs (see the input rows), so "
            "output differences may come from the prompts, not the model. Configure "
            "`transitions.stratify_by` with the attribute that routes traffic to compare like "
            "with like.",
        ]
    shown = sorted(
        (f for f in features if f.get("verdict") in ("breaking", "changed")),
        key=lambda f: (_ORDER[f["verdict"]], -abs(f.get("effect_size") or 0.0)),
    )
    if shown:
        lines += [
            "",
            "| feature | before | after | change | interval | effect | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_row(f) for f in shown]
    for label, verdict, seen in (
        ("Unchanged", "unchanged", True),
        ("Still collecting", "collecting", True),
        ("Not in these events", "collecting", False),
    ):
        names = [
            str(f["feature"])
            for f in features
            if f.get("verdict") == verdict and bool(f.get("n", 1)) is seen
        ]
        if names:
            lines += ["", f"{label}: {', '.join(names)}."]
    inputs = [f for f in t.get("input") or [] if f.get("verdict") in ("changed", "breaking")]
    if inputs:
        lines += ["", "Inputs that differ: " + "; ".join(_input(f) for f in inputs) + "."]
    return "\n".join(lines)


def _row(f: Mapping[str, Any]) -> str:
    unit = f.get("unit", "")
    rate = unit == "%"
    lo, hi = (f.get("ci") or [None, None])[:2]
    if rate:
        before, after = _pct(f.get("before")), _pct(f.get("after"))
        change = _signed(f.get("delta"), " pp")
        interval = f"[{_signed(lo)}, {_signed(hi)}] pp"
        effect = _signed(f.get("effect_size"), " pp")
    else:
        before, after = _num(f.get("before"), unit), _num(f.get("after"), unit)
        change = _signed(f.get("delta"))
        interval = f"[{_signed(lo)}, {_signed(hi)}]"
        d = f.get("effect_size")
        effect = f"d = {_signed(d, digits=2)}" if d is not None else "n/a"
    verdict = f"**{f['verdict']}**"
    return f"| {f['feature']} | {before} | {after} | {change} | {interval} | {effect} | {verdict} |"


def _input(f: Mapping[str, Any]) -> str:
    if f.get("unit") == "%":
        return f"{f['feature']} {_pct(f.get('before'))} → {_pct(f.get('after'))}"
    return f"{f['feature']} {_num(f.get('before'), f.get('unit', ''))} → {_num(f.get('after'), '')}"


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pct(x: Any) -> str:
    v = _finite(x)
    return "n/a" if v is None else f"{v:.1f} %"


def _num(x: Any, unit: str) -> str:
    v = _finite(x)
    if v is None:
        return "n/a"
    text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{text} {unit}".strip()


def _signed(x: Any, suffix: str = "", digits: int | None = None) -> str:
    v = _finite(x)
    if v is None:
        return "n/a" if x is None else ("+∞" if float(x) > 0 else "−∞")
    if digits is not None:
        text = f"{v:+.{digits}f}"
    elif abs(v) >= 100:
        text = f"{v:+,.0f}"
    else:
        text = f"{v:+.3g}"
    return text + suffix
