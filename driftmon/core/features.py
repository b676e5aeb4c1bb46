"""Scalar features of one event (SPEC §2), except the embedding ones.

Budget: the pipeline must take >40 000 events/s on one core, so :meth:`FeatureExtractor.extract`
may spend only a few microseconds on a typical 1.6 KB answer. CPython pays ~1 µs for every pass
over such a text, so each pass below is chosen to be cheap: literal-prefixed regexes (scanned
in C), ``in`` with one character (memchr) as a guard before any costlier check, and regexes that
need a case-insensitive scan run only on a short lower-cased prefix.
"""

from __future__ import annotations

import json
import re
import zlib
from math import log1p
from typing import Any, Final

import jsonschema
import orjson

from driftmon.core.events import Event
from driftmon.settings import EndpointContract, Settings

BUILTIN_FEATURES: Final = (
    "output_chars",
    "output_tokens",
    "empty_output",
    "json_valid",
    "schema_valid",
    "within_max_output_tokens",
    "code_fence",
    "markdown_start",
    "markdown_bold",
    "list_items",
    "paragraphs",
    "sentence_words",
    "preamble",
    "refusal",
    "truncated",
    "feedback",
    "latency",
)
"""Every fixed feature name (check names may not reuse them). ``json_valid``, ``schema_valid``
and ``within_max_output_tokens`` are produced only for endpoints with that contract."""

_CONTRACT_FEATURES: Final = frozenset({"json_valid", "schema_valid", "within_max_output_tokens"})
_TEXT_FEATURES: Final = tuple(f for f in BUILTIN_FEATURES if f not in _CONTRACT_FEATURES)

PREFIX_WINDOW: Final = 300
"""Preamble and refusal patterns see only this many leading characters. Refusals state
themselves up front: on 13k real answers (alpaca_eval, LLMDrift sensitive questions) the
default patterns find 492 refusals in the first 300 characters and 506 in the full texts,
and the search costs ~1 µs instead of one that grows with the answer."""

# One match per list item ("\n" + indentation + marker), code fence ("\n" + indentation + fence)
# and run of blank lines ("\n" exactly, at its first empty line). The literal "\n" prefix lets
# the regex engine skip between lines in C, and plain lines fail on their first character.
_LINE_HEADS: Final = re.compile(
    r"\n(?:(?=\n)(?<!\n\n)|[ \t]*+(?:(?:[-*+]|[0-9]{1,9}[.)])(?=[ \t])|```|~~~))"
)
_MARKDOWN_START: Final = re.compile(r"#{1,6}(?:\s|$)|(?:[-*+]|[0-9]{1,9}[.)])[ \t]")
_BOLD_STARS: Final = re.compile(r"\*\*[^\s*](?:[^\n]*?[^\s*])?\*\*")
# The lookbehind sits after the literal so the scan can still skip to "__"; backticks and a
# following "(" rule out code such as `__init__` and __init__().
_BOLD_UNDERSCORES: Final = re.compile(r"__(?<![\w`]__)[^\s_](?:[^\n]*?[^\s_])?__(?![\w`(])")
# Sentence ends inside a line; the lookbehinds skip the "1. " of a numbered list item.
_PERIOD_END: Final = re.compile(r"\.[ \t](?<!\n[0-9]\.[ \t])(?<!\n[0-9][0-9]\.[ \t])")
_QUESTION_END: Final = re.compile(r"\?[ \t]")
_EXCLAIM_END: Final = re.compile(r"![ \t]")
# zlib.adler32's low half is 1 + the byte sum (mod 65521): a branch-free C loop. Mapping
# spaces and tabs to 1 and every other byte to 0 turns it into a fast space counter —
# str.count(" ") is ~2x slower on real text because every hit is a mispredicted branch.
_SPACE_BYTES: Final = bytes(1 if b in (0x20, 0x09) else 0 for b in range(256))
_ADLER_MOD: Final = 65521


def _compile_any(patterns: list[str], flags: int = 0) -> list[re.Pattern[str]]:
    """Regexes that together match where any of ``patterns`` matches."""
    try:  # joined bare (not each in a group) so the engine can factor out a shared first char
        return [re.compile("|".join(patterns), flags)] if patterns else []
    except re.error:  # e.g. inline global flags, which must come first: keep them apart
        return [re.compile(p, flags) for p in patterns]


def _compile_refusals(patterns: list[str]) -> list[re.Pattern[str]]:
    """Refusal regexes grouped so that each is scanned for one literal first character.

    An alternation whose branches share their first character is scanned for it in C; mixed
    first characters make the engine try every branch at many positions (~3x slower).
    Patterns are matched against lower-cased text; a group with an upper-case letter gets
    IGNORECASE so it still works, at the cost of a slower scan.
    """
    groups: dict[tuple[str, bool], list[str]] = {}
    for p in patterns:
        upper = any(c.isupper() for c in re.sub(r"\\.", "", p))
        groups.setdefault((p[:1], upper), []).append(p)
    return [rx for (_, upper), g in groups.items() for rx in _compile_any(g, re.I if upper else 0)]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses a few valid documents (e.g. 1e400); json is the slow, exact fallback
        return True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


class _Contract:
    """One endpoint's contract, compiled once."""

    __slots__ = ("json", "match", "max_tokens", "names", "not_match", "validator")

    def __init__(self, endpoint: str, contract: EndpointContract) -> None:
        self.json = contract.format == "json"
        self.validator: Any = None
        if contract.json_schema is not None:
            cls = jsonschema.validators.validator_for(contract.json_schema)
            self.validator = cls(contract.json_schema)
        self.max_tokens = contract.max_output_tokens
        self.match = [(n, re.compile(p)) for n, p in contract.must_match.items()]
        self.not_match = [(n, re.compile(p)) for n, p in contract.must_not_match.items()]
        checks = [n for n, _ in self.match + self.not_match]
        clash = set(checks) & set(BUILTIN_FEATURES) or {n for n in checks if checks.count(n) > 1}
        if clash:
            raise ValueError(
                f"endpoints.{endpoint}: check name(s) {sorted(clash)} clash with another feature"
            )
        names = ["json_valid"] if self.json else []
        names += ["schema_valid"] if self.validator is not None else []
        names += ["within_max_output_tokens"] if self.max_tokens is not None else []
        self.names = (*names, *checks)

    def add(self, event: Event, f: dict[str, float]) -> None:
        output = event.output
        if self.json or self.validator is not None:
            ok, doc = _parse_json(output)
            if self.json:
                f["json_valid"] = 1.0 if ok else 0.0
            if self.validator is not None:
                f["schema_valid"] = 1.0 if ok and self.validator.is_valid(doc) else 0.0
        if self.max_tokens is not None and event.output_tokens is not None:
            f["within_max_output_tokens"] = 1.0 if event.output_tokens <= self.max_tokens else 0.0
        for name, rx in self.match:
            f[name] = 1.0 if rx.search(output) else 0.0
        for name, rx in self.not_match:
            f[name] = 0.0 if rx.search(output) else 1.0


class FeatureExtractor:
    """Turns events into ``{feature: value}``; all regexes and schemas are compiled here."""

    def __init__(self, settings: Settings) -> None:
        fs = settings.features
        # Preambles are anchored, so matching costs little even case-insensitively.
        self._preamble = _compile_any(fs.preamble_patterns, re.IGNORECASE)
        self._refusal = _compile_refusals(fs.refusal_patterns)
        self._contracts = {ep: _Contract(ep, c) for ep, c in settings.endpoints.items()}

    def feature_names(self, endpoint: str) -> tuple[str, ...]:
        """Names ``extract`` can produce for ``endpoint`` (optional inputs permitting)."""
        contract = self._contracts.get(endpoint)
        return _TEXT_FEATURES if contract is None else _TEXT_FEATURES + contract.names

    def extract(self, event: Event) -> dict[str, float]:
        """The scalar features of one event; optional inputs that are absent add nothing."""
        if event.kind == "feedback":
            return {} if event.feedback is None else {"feedback": event.feedback}
        output = event.output
        f = self._text_features(output)
        if event.output_tokens is not None:
            f["output_tokens"] = log1p(event.output_tokens)
        if event.finish_reason is not None:
            f["truncated"] = 1.0 if event.finish_reason == "length" else 0.0
        if event.latency_ms is not None:
            f["latency"] = log1p(max(event.latency_ms, 0.0))
        if event.feedback is not None:
            f["feedback"] = event.feedback
        contract = self._contracts.get(event.endpoint)
        if contract is not None:
            contract.add(event, f)
        return f

    def _text_features(self, output: str) -> dict[str, float]:
        body = output.strip()
        if not body:
            return dict.fromkeys(_EMPTY_KEYS, 0.0) | {
                "output_chars": log1p(len(output)),
                "empty_output": 1.0,
            }
        if "\r" in body:
            body = body.replace("\r\n", "\n").replace("\r", "\n")
        text = "\n" + body  # the first line gets a leading newline like every other line
        heads = _LINE_HEADS.findall(text)
        runs = heads.count("\n")
        fences = 0
        if "`" in body or "~" in body:
            fences = sum(1 for h in heads if h[-1] in "`~")
        items = len(heads) - runs - fences
        # Lines that are not blank; a run of several blank lines counts once (rare, and it only
        # adds a sentence).
        nonblank = text.count("\n") - runs

        # Sentences end at line ends and at ". ", "? ", "! " inside a line.
        sentences = nonblank + len(_PERIOD_END.findall(text))
        if "?" in body:
            sentences += len(_QUESTION_END.findall(body))
        if "!" in body:
            sentences += len(_EXCLAIM_END.findall(body))
        # Words: spaces separate words within a line, the line end closes its last word; list
        # markers are not words. Indentation and double spaces count as extra words (cheap, and
        # exact for ordinary prose).
        if len(body) < _ADLER_MOD:
            spaces = (
                zlib.adler32(body.encode("utf-8", "surrogatepass").translate(_SPACE_BYTES)) - 1
            ) & 0xFFFF
        else:
            spaces = body.count(" ") + body.count("\t")
        words = spaces + nonblank - items

        bold = ("*" in body and _BOLD_STARS.search(body) is not None) or (
            "_" in body and _BOLD_UNDERSCORES.search(body) is not None
        )
        head = body[:PREFIX_WINDOW].lower()
        if "’" in head:
            head = head.replace("’", "'")
        return {
            "output_chars": log1p(len(output)),
            "empty_output": 0.0,
            "code_fence": 1.0 if fences else 0.0,
            "markdown_start": 1.0 if _MARKDOWN_START.match(body) else 0.0,
            "markdown_bold": 1.0 if bold else 0.0,
            "list_items": log1p(items),
            "paragraphs": log1p(runs + 1),
            "sentence_words": words / sentences if sentences > 0 else 0.0,
            "preamble": 1.0 if any(rx.match(head) for rx in self._preamble) else 0.0,
            "refusal": 1.0 if any(rx.search(head) for rx in self._refusal) else 0.0,
        }


_EMPTY_KEYS: Final = (
    "code_fence",
    "markdown_start",
    "markdown_bold",
    "list_items",
    "paragraphs",
    "sentence_words",
    "preamble",
    "refusal",
)
