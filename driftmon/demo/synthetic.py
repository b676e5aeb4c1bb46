"""Deterministic synthetic stream of LLM-output events (SPEC §1), optionally with a silent upgrade.

All text comes from the small vocabularies and sentence templates in this module. Used by the
``driftmon replay`` demo, the throughput benchmark and the Kafka demo.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from itertools import accumulate
from math import log
from typing import Any, Final

__all__ = ["BAD_LINE_REASONS", "Upgrade", "default_demo_stream", "generate"]

# Rejection reason that each garbage line (cycled in this order) must produce.
BAD_LINE_REASONS: Final = ("not_json", "not_object", "missing_field", "bad_type", "out_of_range")
FEEDBACK_EVENT_RATE: Final = 0.05
INLINE_FEEDBACK_RATE: Final = 0.2
UPGRADED_POSITIVE_RATE: Final = 0.55


@dataclass(frozen=True)
class Upgrade:
    endpoint: str  # which endpoint is silently upgraded
    at_event: int  # global event (line) index where it starts
    # after the switch the endpoint's model label stays the same (silent) unless new_model is set
    new_model: str | None = None


# model, requested alias, provider, id prefix, ms per output token, time to first token (ms)
_MODELS: Final = (
    ("gpt-4o-2024-08-06", "gpt-4o", "openai", "chatcmpl-", 14.0, 420.0),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest", "anthropic", "msg_", 16.0, 650.0),
    ("llama-3.1-70b-instruct", "llama-3.1-70b", "vllm", "cmpl-", 22.0, 180.0),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "openai", "chatcmpl-", 8.0, 300.0),
    ("gemini-1.5-pro-002", "gemini-1.5-pro", "gcp.gemini", "resp-", 12.0, 520.0),
)
# endpoint, style, model index; further keys are f"endpoint-{i:03d}" cycling styles and models
_NAMED: Final = (
    ("support-chat", "chat", 0),
    ("sql-assistant", "json", 3),
    ("summarizer", "summary", 1),
    ("code-helper", "code", 2),
)
_STYLES: Final = ("chat", "json", "summary", "code")


@dataclass(frozen=True)
class _Style:
    log_chars: float  # log of the typical answer length in characters
    preamble: float
    header: float
    bold: float
    lists: float
    refusal: float
    log_input_tokens: float


_STYLE: Final = {
    "chat": _Style(log(650), 0.10, 0.03, 0.10, 0.30, 0.010, log(900)),
    "json": _Style(log(330), 0.0, 0.0, 0.0, 0.0, 0.003, log(1500)),
    "summary": _Style(log(1000), 0.04, 0.35, 0.15, 0.50, 0.002, log(3500)),
    "code": _Style(log(1300), 0.12, 0.10, 0.10, 0.20, 0.004, log(1200)),
}


def _tpl(block: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in block.strip().splitlines())


def _slots(**kw: str) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v.split("|")) for k, v in kw.items()}


_CHAT = _slots(
    obj="your account|your subscription|the invoice|your password|two-factor authentication|"
    "the mobile app|your order|the refund|the shipping address|your payment method|the export|"
    "your workspace|the API key|the team invitation",
    place="Settings > Billing|the Account page|the Orders tab|the admin console|the profile menu|"
    "the Security section|the Help Center|the dashboard",
    verb="update|reset|cancel|change|verify|download|reactivate|remove|review|renew",
    fix="clearing the browser cache|signing out and back in|updating the app|using a private "
    "window|turning off the VPN|checking the spam folder|re-entering the card details",
    n="2|3|5|7|10|24|48",
    unit="minutes|hours|business days",
    team="billing|security|shipping|technical support|accounts",
    state="processed|refunded|confirmed|activated|synchronised|updated",
)
_CHAT_TPL = _tpl("""
To {verb} {obj}, open {place} and follow the prompts.
If {obj} still does not work, try {fix}.
In most cases {obj} is {state} within {n} {unit}.
You can {verb} {obj} from {place} at any time.
Please note that changes to {obj} can take up to {n} {unit} to appear.
Once that is done, {obj} should be {state} automatically.
If the problem continues after {fix}, our {team} team can take a closer look.
For security reasons, we ask you to {verb} {obj} before making further changes.
I checked the details you shared, and {obj} appears to be {state} already.
Only workspace owners can {verb} {obj}, so you may need to ask an administrator.
You will receive a confirmation email once {obj} has been {state}.
Try {fix} first, since that resolves most issues with {obj}.
""")
_CHAT_ITEMS = _tpl("""
Open {place}.
Select {obj} and choose {verb}.
Try {fix}.
Wait {n} {unit} and check again.
Contact the {team} team if it is still not {state}.
Confirm that {obj} shows as {state}.
""")
_SUMMARY = _slots(
    who="the product team|finance|the platform group|legal|customer success|the design team|"
    "marketing|the on-call engineer|the steering committee",
    act="migrate the billing service|freeze new feature work|hire two more engineers|"
    "renegotiate the vendor contract|ship the onboarding redesign|run a pricing experiment|"
    "retire the legacy API|audit access permissions|publish the quarterly report",
    when="the end of the month|next Friday|the Q3 review|the next release|mid-November|"
    "the board meeting",
    topic="rising infrastructure costs|the delayed launch|churn among small customers|"
    "the security audit findings|support response times|data retention rules|the hiring plan",
    pct="3|4.5|7|12|18|22",
    region="Europe|North America|APAC|Latin America|the enterprise segment",
    period="the previous quarter|last year|the original forecast",
)
_SUMMARY_TPL = _tpl("""
{who} agreed to {act} before {when}.
{who} raised concerns about {topic}.
Revenue in {region} grew {pct}% compared with {period}.
Costs in {region} were {pct}% above {period}, mainly because of {topic}.
The main open risk is {topic}, which could affect the plan to {act}.
The document argues that the company should {act} to address {topic}.
No decision was made on {topic}; it will be revisited at {when}.
{who} presented an analysis of {topic} and recommended to {act}.
Overall, the discussion focused on {topic} and how it affects {region}.
""")
_SUMMARY_ITEMS = _tpl("""
{who} will {act} by {when}.
Follow up on {topic}.
{region}: {pct}% change versus {period}.
Decision pending on {topic}.
{who} to report on {topic} by {when}.
""")
_CODE = _slots(
    cause="the list is modified while you iterate over it|the function returns None for a missing "
    "key|the timezone is dropped during parsing|the connection is never closed|the loop variable "
    "is captured late|two threads update the counter without a lock|the pattern is greedy",
    fix="iterating over a copy|returning a default value|using an aware datetime|using a context "
    "manager|binding the value as a default argument|guarding the update with a lock|using a "
    "non-greedy pattern",
    thing="the helper function|this version|the generator|the decorator|the retry wrapper|"
    "the fixture|the query builder",
    prop="avoids the extra allocation|keeps the public interface unchanged|is easier to test|"
    "runs in linear time|handles empty input correctly|no longer blocks the event loop",
    fn="load_items|parse_rows|merge_configs|fetch_page|normalise_names|count_events",
    arg="items|rows|records|payload|entries",
    n="3|5|10|30",
)
_CODE_TPL = _tpl("""
The error happens because {cause}.
You can fix it by {fix}.
{thing} {prop}.
I would also recommend {fix}, since {cause} in some edge cases.
Note that {thing} {prop}, but only if the input is validated first.
With this change, {thing} {prop}.
""")
_CODE_ITEMS = ("Try {fix}.", "Check whether {cause}.", "Make sure {thing} {prop}.")
_SNIPPETS = (
    "python\ndef {fn}({arg}):\n    result = []\n    for item in list({arg}):\n"
    "        if item is not None:\n            result.append(item)\n    return result",
    "python\nwith open(path, encoding='utf-8') as fh:\n    {arg} = [line.strip() for line in fh]\n"
    "print(len({arg}))",
    "python\nimport time\n\ndef {fn}(call, attempts={n}):\n    for i in range(attempts):\n"
    "        try:\n            return call()\n        except OSError:\n"
    "            time.sleep(2 ** i)\n    raise RuntimeError('gave up')",
    "javascript\nasync function {fn}({arg}) {{\n  const res = await fetch(`/api/${{{arg}}}`);\n"
    "  if (!res.ok) throw new Error(res.statusText);\n  return res.json();\n}}",
    'bash\nfor f in data/*.csv; do\n  wc -l "$f"\ndone | sort -n | tail -n {n}',
)
_SQL = _slots(
    table="orders|customers|invoices|events|subscriptions|tickets|payments|sessions",
    col="created_at|amount|status|country|plan|user_id|total|region",
    cond="status = 'active'|created_at >= DATE '2025-01-01'|amount > 100|country = 'DE'|"
    "plan IN ('pro', 'team')|region = 'EU'",
    agg="COUNT(*)|SUM(amount)|AVG(total)|MAX(created_at)",
    n="10|20|50|100",
)
_SQL_TPL = (
    "SELECT {col}, {agg} AS value FROM {table} WHERE {cond} GROUP BY {col} ORDER BY value DESC",
    "SELECT * FROM {table} WHERE {cond} ORDER BY {col} DESC LIMIT {n}",
    "SELECT c.{col}, COUNT(*) AS n FROM {table} c JOIN users u ON u.id = c.user_id "
    "WHERE c.{cond} GROUP BY c.{col}",
    "SELECT DATE_TRUNC('week', created_at) AS week, {agg} FROM {table} GROUP BY 1 ORDER BY 1",
)
_SQL_EXPL = _tpl("""
The query filters on {cond} and sorts by {col}.
It can use an index on {col} if one exists.
Grouping by {col} gives one row per value.
The result is limited to {n} rows to keep it fast.
Adjust the date range if you need a longer history.
{agg} is computed after the filter is applied.
""")
_HEADERS = {"chat": "## How to fix it|### Steps|## Quick answer", "code": "## Solution|## Fix"}
_HEADERS["summary"] = "## Summary|## Key points|### Overview|## TL;DR"
_BOLD_LABELS = {"chat": "Step {}", "summary": "Action item|Follow-up|Key point", "code": "Fix|Tip"}
_PREAMBLES = ("Sure!", "Certainly.", "Of course!", "Great question!", "Happy to help.")
_UP_OPENERS = ("Certainly! Here is", "Certainly! Here's", "Sure! Here is", "Of course! Here is")
_UP_WHAT = {
    "chat": "a step-by-step guide to sort this out",
    "json": "the SQL query you asked for",
    "summary": "a concise summary of the document",
    "code": "an updated version of the code",
}
_CLOSINGS = _tpl("""
Let me know if you have any other questions!
I hope this helps.
Is there anything else I can help you with?
""")
_REFUSALS = _tpl("""
I'm sorry, but I can't help with that.
I'm sorry, but I can't assist with that request.
I can't help with that request, but I'm happy to help with something else.
""")


@dataclass(frozen=True)
class _Pools:
    sentences: dict[str, list[str]]
    items: dict[str, list[str]]
    snippets: list[str]
    queries: list[tuple[str, list[str]]]


def _fill(
    r: random.Random, tpls: Sequence[str], slots: dict[str, tuple[str, ...]], n: int
) -> list[str]:
    out = []
    for _ in range(n):
        s = r.choice(tpls).format(**{k: r.choice(v) for k, v in slots.items()})
        out.append(s[0].upper() + s[1:])
    out = list(dict.fromkeys(out))
    r.shuffle(out)
    return out


def _pick(r: random.Random, pool: list[str], k: int) -> list[str]:
    """k distinct entries: a window of the (pre-shuffled) pool at a random offset; fast."""
    i = int(r.random() * (len(pool) - k + 1))
    return pool[i : i + k]


@cache
def _pools() -> _Pools:
    """Sentence pools, built once with a fixed seed so every stream draws from the same text."""
    r = random.Random(20260101)
    domains = {
        "chat": (_CHAT_TPL, _CHAT_ITEMS, _CHAT),
        "summary": (_SUMMARY_TPL, _SUMMARY_ITEMS, _SUMMARY),
        "code": (_CODE_TPL, _CODE_ITEMS, _CODE),
        "json": (_SQL_EXPL, _SQL_EXPL, _SQL),
    }
    sentences = {s: _fill(r, d[0], d[2], 1500) for s, d in domains.items()}
    items = {s: _fill(r, d[1], d[2], 400) for s, d in domains.items()}
    snippets = [s[0].lower() + s[1:] for s in _fill(r, _SNIPPETS, _CODE, 200)]
    queries = []
    for _ in range(600):
        table = r.choice(_SQL["table"])
        q = _fill(r, _SQL_TPL, {**_SQL, "table": (table,)}, 1)[0]
        queries.append((q, [table, "users"] if " JOIN users " in q else [table]))
    return _Pools(sentences, items, snippets, queries)


@dataclass
class _Key:
    endpoint: str
    style: str
    model: tuple[str, str, str, str, float, float]
    log_chars: float  # per-key length level, spread, feedback positive rate, traffic weight
    sigma: float
    pos_rate: float
    weight: float
    rfc3339: bool  # timestamp form: RFC 3339 string, else epoch milliseconds
    kind_field: bool  # whether completions carry "kind": "completion"
    prompt_version: str
    recent: deque[tuple[str, str, bool]] = field(default_factory=lambda: deque(maxlen=64))


def _make_keys(n_keys: int, r: random.Random) -> list[_Key]:
    keys = []
    for i in range(n_keys):
        ep, style, m = _NAMED[i] if i < len(_NAMED) else (f"endpoint-{i:03d}", _STYLES[i % 4], i)
        lc = _STYLE[style].log_chars + r.uniform(-0.2, 0.2)
        sigma, pos, w = r.uniform(0.35, 0.55), r.uniform(0.74, 0.88), r.uniform(0.7, 1.3)
        model = _MODELS[m % len(_MODELS)]
        pv = f"v{r.randint(1, 9)}"
        keys.append(_Key(ep, style, model, lc, sigma, pos, w, i % 2 == 0, r.random() < 0.5, pv))
    return keys


def _prose(r: random.Random, style: str, up: bool, target: float) -> str:
    p, st = _pools(), _STYLE[style]
    use_bold = r.random() < (max(0.6, 3 * st.bold) if up else st.bold)
    lists = max(0.65, st.lists) if up else st.lists
    parts: list[str] = []
    if r.random() < (st.header + 0.3 if up else st.header):
        parts.append(r.choice(_HEADERS[style].split("|")))
    has_code = style != "code" or r.random() < 0.25
    size, first_is_para = 0, False
    while size < target:
        x = r.random()
        if not has_code and (x < 0.6 or size > target / 2):
            block, has_code = "```" + r.choice(p.snippets) + "\n```", True
        elif x < lists * 0.6:
            items = _pick(r, p.items[style], r.randint(4, 8) if up else r.randint(3, 6))
            if use_bold:
                labels = _BOLD_LABELS[style].split("|")
                items = [f"**{r.choice(labels).format(j)}:** {it}" for j, it in enumerate(items, 1)]
            num = r.random() < 0.5
            block = "\n".join(f"{j}. {it}" if num else f"- {it}" for j, it in enumerate(items, 1))
        else:
            block = " ".join(_pick(r, p.sentences[style], r.randint(2, 5)))
            if use_bold and r.random() < 0.3:
                block = r.choice(("**Note:** ", "**Tip:** ", "**Important:** ")) + block
            first_is_para = first_is_para or not parts
        parts.append(block)
        size += len(block) + 2
    if style == "chat" and r.random() < 0.3:
        parts.append(r.choice(_CLOSINGS))
    text = "\n\n".join(parts)
    if up and r.random() < 0.6:
        return f"{r.choice(_UP_OPENERS)} {_UP_WHAT[style]}:\n\n{text}"
    if r.random() < st.preamble:
        return r.choice(_PREAMBLES) + (" " if first_is_para else "\n\n") + text
    return text


def _json_answer(r: random.Random, up: bool, target: float) -> str:
    p = _pools()
    query, tables = r.choice(p.queries)
    k = min(40, max(1, round((target - len(query) - 70) / 60)))
    explanation = " ".join(_pick(r, p.sentences["json"], k))
    confidence = round(min(0.99, max(0.3, r.gauss(0.82, 0.08))), 2)
    obj = {"query": query, "explanation": explanation, "tables": tables, "confidence": confidence}
    if not up:
        return json.dumps(obj)
    text = json.dumps(obj, indent=2)
    if r.random() < 0.9:
        text = f"```json\n{text}\n```"
    if r.random() < 0.6:
        text = f"{r.choice(_UP_OPENERS)} {_UP_WHAT['json']}:\n\n{text}"
    return text


def _timestamp(key: _Key, t: float) -> str | int:
    if key.rfc3339:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    return int(t * 1000)


def _feedback_value(r: random.Random, key: _Key, up: bool) -> int:
    return 1 if r.random() < (UPGRADED_POSITIVE_RATE if up else key.pos_rate) else -1


def _completion(r: random.Random, key: _Key, t: float, up: bool, model: str) -> str:
    st = _STYLE[key.style]
    _, alias, provider, id_prefix, ms_per_token, ttft = key.model
    target = r.lognormvariate(key.log_chars, key.sigma) * (1.6 if up else 1.0)
    if r.random() < st.refusal:
        text = r.choice(_REFUSALS)
    elif key.style == "json":
        text = _json_answer(r, up, target)
    else:
        text = _prose(r, key.style, up, target)
    finish = "stop"
    if r.random() < 0.01:
        finish, text = "length", text[: int(len(text) * r.uniform(0.6, 0.95))].rsplit(" ", 1)[0]
    tokens = max(1, round(len(text) / 4 * r.gauss(1.0, 0.07)))
    latency = ttft * r.lognormvariate(0, 0.35) + tokens * ms_per_token * r.lognormvariate(0, 0.15)
    rid = f"{id_prefix}{r.getrandbits(96):024x}"
    key.recent.append((rid, model, up))
    ev: dict[str, Any] = {"kind": "completion"} if key.kind_field else {}
    ev |= {
        "id": rid,
        "timestamp": _timestamp(key, t),
        "endpoint": key.endpoint,
        "model": model,
        "requested_model": alias,
        "provider": provider,
        "prompt_version": key.prompt_version,
        "output": text,
        "input_tokens": int(r.lognormvariate(st.log_input_tokens, 0.5)),
        "output_tokens": tokens,
        "finish_reason": finish,
        "latency_ms": round(latency, 1),
    }
    if r.random() < INLINE_FEEDBACK_RATE:
        v = _feedback_value(r, key, up)
        ev["feedback"] = {"name": "thumbs", "value": v} if r.random() < 0.1 else v
    return json.dumps(ev)


def _feedback(r: random.Random, key: _Key, t: float) -> str:
    rid, model, up = r.choice(key.recent)
    ev: dict[str, Any] = {"kind": "feedback", "endpoint": key.endpoint, "model": model, "id": rid}
    ev |= {"name": "thumbs", "value": _feedback_value(r, key, up), "timestamp": _timestamp(key, t)}
    return json.dumps(ev)


def _bad_line(j: int, key: _Key) -> str:
    ep, model = key.endpoint, key.model[0]
    reason = BAD_LINE_REASONS[j % len(BAD_LINE_REASONS)]
    if reason == "not_json":
        return f'{{"endpoint": "{ep}", "model": "{model}", "output": "Sure, here is'
    if reason == "not_object":
        return json.dumps([ep, model, "Sure, here is the answer."])
    if reason == "missing_field":
        return json.dumps({"endpoint": ep, "output": "The model field is missing."})
    if reason == "bad_type":
        return json.dumps({"endpoint": ep, "model": model, "output": 42})
    return json.dumps({"kind": "feedback", "endpoint": ep, "model": model, "value": 7})


def generate(
    n_events: int,
    *,
    n_keys: int = 4,
    seed: int = 0,
    upgrade: Upgrade | None = None,
    start_time: float = 1_767_225_600.0,
    events_per_second: float = 50.0,
    bad_line_every: int = 0,
) -> Iterator[str]:
    """Yield ``n_events`` JSON lines (str, no newline), deterministic for ``seed``.

    Keys ``(endpoint, model)`` are interleaved at random with per-key traffic weights; about 5% of
    lines are separate feedback events for a recent response of the same key. Arrival gaps are
    exponential with rate ``events_per_second`` from ``start_time`` (epoch seconds). With
    ``bad_line_every=k`` the lines at 0-based indices k-1, 2k-1, ... are garbage whose rejection
    reasons cycle through BAD_LINE_REASONS; each replaces the event that would have been there,
    every other line is unchanged. Bad arguments raise ValueError at the call, not on iteration.
    """
    if n_events < 0 or n_keys < 1 or events_per_second <= 0 or bad_line_every < 0:
        raise ValueError(
            "need n_events >= 0, n_keys >= 1, events_per_second > 0, bad_line_every >= 0"
        )
    r = random.Random(seed)
    keys = _make_keys(n_keys, r)
    if upgrade is not None and upgrade.endpoint not in {k.endpoint for k in keys}:
        raise ValueError(f"upgrade endpoint {upgrade.endpoint!r} is not in the stream")
    if upgrade is not None and upgrade.at_event < 0:
        raise ValueError("upgrade.at_event must be >= 0")
    _pools()

    def lines() -> Iterator[str]:
        t, cum = start_time, list(accumulate(k.weight for k in keys))
        for i in range(n_events):
            t += r.expovariate(events_per_second)
            key = r.choices(keys, cum_weights=cum)[0]
            up = upgrade is not None and i >= upgrade.at_event and key.endpoint == upgrade.endpoint
            if key.recent and r.random() < FEEDBACK_EVENT_RATE:
                line = _feedback(r, key, t)
            else:
                new_model = upgrade.new_model if up and upgrade else None
                line = _completion(r, key, t, up, new_model or key.model[0])
            if bad_line_every and (i + 1) % bad_line_every == 0:
                line = _bad_line((i + 1) // bad_line_every - 1, key)
            yield line

    return lines()


def default_demo_stream(seed: int = 0, *, bad_line_every: int = 0) -> tuple[list[str], Upgrade]:
    """12 000 events over 4 endpoints; the json endpoint ``sql-assistant`` is silently upgraded at
    event 6000 (longer answers, preambles, fenced JSON, more markdown, lower feedback)."""
    upgrade = Upgrade(endpoint="sql-assistant", at_event=6000)
    return list(
        generate(12_000, seed=seed, upgrade=upgrade, bad_line_every=bad_line_every)
    ), upgrade
