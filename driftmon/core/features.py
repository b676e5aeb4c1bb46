"""Scalar features of one event (SPEC §2), except the embedding ones.

The pipeline must take >40 000 events/s on one core, so :meth:`FeatureExtractor.extract` has a
budget of a few microseconds for a 1.6 KB answer. CPython spends about 1 µs per pass over such
a text, plus ~0.2 µs per regex call, so there are few passes and calls: regexes that start
with a literal (the engine skips to it in C), single-character ``in`` tests (memchr) guarding
anything costlier, and bounded windows for the statistics that do not need the whole text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from math import log1p
from typing import Any, Final, Literal

import jsonschema
import orjson

from driftmon.core import registry
from driftmon.core.events import Event


@dataclass(frozen=True, slots=True)
class ContractConfig:
    """One endpoint's output contract (SPEC §2): what its answers must look like."""

    format: Literal["json", "text"] = "text"
    json_schema: Mapping[str, Any] | None = None
    max_output_tokens: int | None = None
    must_match: Mapping[str, str] = field(default_factory=dict)
    must_not_match: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What :class:`FeatureExtractor` needs: its patterns and the endpoints' contracts
    (``driftmon.config.feature_config`` builds it from the settings)."""

    preamble_patterns: tuple[str, ...]
    refusal_patterns: tuple[str, ...]
    endpoints: Mapping[str, ContractConfig] = field(default_factory=dict)


BUILTIN_FEATURES: Final = registry.names("text", "event", "contract")
"""Every fixed feature name (from :mod:`driftmon.core.registry`); check names may not reuse
them. ``json_valid``, ``schema_valid`` and ``within_max_output_tokens`` exist only for
endpoints with that contract."""

_TEXT_FEATURES: Final = registry.names("text", "event")
_ZERO_WHEN_EMPTY: Final = (
    "code_fence",
    "markdown_start",
    "markdown_bold",
    "list_items",
    "paragraphs",
    "sentence_words",
    "preamble",
    "refusal",
)

PREFIX_WINDOW: Final = 300
"""Preamble and refusal patterns see only the first 300 characters (of the stripped output).
Refusals state themselves up front: over 13k real answers (alpaca_eval, LLMDrift sensitive
questions) the default patterns find 492 refusals in this window and 506 in the full texts,
and the search costs ~1 µs whatever the answer's length."""

SENTENCE_WINDOW: Final = 400
"""``sentence_words`` is measured on the first 400 characters: it is a mean, and on alpaca_eval
model switches the window keeps the clear shifts (Cohen's d, window vs full text: Llama-2 -> 3
-0.33/-0.35, gpt-3.5 -> Gemini -0.33/-0.38, gpt-4-turbo -> 4o -0.29/-0.28) and the no-change
controls near 0, at a quarter of the cost of a 1.6 KB answer."""

MAX_JSON_DEPTH: Final = 1024
"""An output nested deeper than 1 024 arrays/objects (orjson's own limit) is not
``json_valid``; the slow-path parser's RecursionError counts the same way."""

MAX_SCHEMA_DEPTH: Final = 64
"""An output nested deeper than 64 arrays/objects counts as not ``schema_valid`` without
being validated: it is not an error. jsonschema validates recursively, several Python frames
per level (a self-referencing schema over 300 nested brackets raised RecursionError), so an
explicit bound keeps the result the same wherever it is computed. 64 levels leave room for
schemas whose references cost many frames per level (one with allOf/oneOf indirection fails
past ~95), and no real answer nests that deep. A RecursionError during validation all the
same also counts as not ``schema_valid``. The bound is checked only for endpoints with a
schema, where validation costs far more than the check (~0.6 µs for a 500-character answer)."""

MAX_SCHEMA_CHARS: Final = 65_536
"""An output longer than this counts as not ``schema_valid`` without being validated:
jsonschema costs ~40 µs per object in an array, so a 1 MB answer would hold a record for
seconds, while ~16 000 tokens bound realistic structured answers. ``json_valid`` has no such
bound: orjson parses a 1 MB document in milliseconds."""

# A line that is a list item or a code fence (after any indentation), optionally preceded by
# the blank line(s) of a run — a run is matched at its first blank line only. The match always
# begins with the line's "\n", so the engine skips between lines in C and plain lines fail on
# their first character. Entries: "\n- ", "\n  12. ", "\n```", "\n\n", "\n\n- ", "\n \n```" …
_HEAD: Final = r"[ \t]*+(?:(?:[-*+]|[0-9]{1,9}[.)])[ \t]|```|~~~)"
_LINE_HEADS: Final = re.compile(
    rf"\n[ \t]*+(?:\n(?<!\n\n\n)(?:{_HEAD})?|(?:[-*+]|[0-9]{{1,9}}[.)])[ \t]|```|~~~)"
)
_MARKDOWN_FIRST: Final = frozenset("#-*+0123456789")  # skips the regex call for prose
_MARKDOWN_START: Final = re.compile(r"#{1,6}(?:\s|$)|(?:[-*+]|[0-9]{1,9}[.)])[ \t]")
_BOLD_STARS: Final = re.compile(r"\*\*[^\s*](?:[^\n]*?[^\s*])?\*\*")
# The lookbehind comes after the literal so the scan still skips to "__"; backticks and a
# following "(" keep code such as `__init__` and __init__() from counting as bold.
_BOLD_UNDERSCORES: Final = re.compile(r"__(?<![\w`]__)[^\s_](?:[^\n]*?[^\s_])?__(?![\w`(])")
# Sentence statistics use one big int holding a class byte per window byte: bit 0 whitespace,
# bit 1 newline, bit 2 ".!?", bit 3 space or tab. ``x >> 8`` lines each byte up with the next
# one and ``int.bit_count`` counts in C, so each count below costs a few C loops over ~100
# machine words instead of a regex pass or a Python loop.
_CLASS_BYTES: Final = bytes(
    (b in b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
    | (b == 0x0A) << 1
    | (b in b".!?") << 2
    | (b in b" \t") << 3
    for b in range(256)
)
_BIT0: Final = int.from_bytes(b"\x01" * 4 * SENTENCE_WINDOW, "little")  # UTF-8: <= 4 bytes/char
_BIT1: Final = _BIT0 << 1


def _compile_any(patterns: list[str], flags: int = 0) -> list[re.Pattern[str]]:
    """Regexes that together match where any of ``patterns`` matches."""
    if not patterns:
        return []
    try:  # joined bare, not each in a group, so the engine can factor out a shared first char
        return [re.compile("|".join(patterns), flags)]
    except re.error:  # e.g. inline global flags, which must come first: keep them apart
        return [re.compile(p, flags) for p in patterns]


def _compile_refusals(patterns: list[str]) -> list[re.Pattern[str]]:
    """Refusal regexes, grouped so that each group's branches share their first character.

    The engine then scans for that character in C; branches with mixed first characters are
    tried at many more positions (~3x slower). Text is lower-cased before matching; a pattern
    with an upper-case letter gets IGNORECASE so it still matches, at the cost of speed.
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
        return True, orjson.loads(text)  # JSONDecodeError past MAX_JSON_DEPTH
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses a few valid documents (e.g. 1e400); json is the exact slow path
        return True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


def _deeper_than(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests more than ``limit`` arrays/objects; level by level, no recursion."""
    if type(doc) is not list and type(doc) is not dict:
        return False  # a string holding brackets
    level = [doc]
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            below.extend(c for c in children if type(c) is list or type(c) is dict)
        if not below:
            return False
        level = below
    return True


def _schema_valid(validator: Any, doc: Any, text: str) -> bool:
    """``validator.is_valid(doc)`` within MAX_SCHEMA_CHARS and MAX_SCHEMA_DEPTH."""
    if len(text) > MAX_SCHEMA_CHARS:
        return False
    # Each "[" or "{" opens at most one level, so most answers skip the exact walk.
    if text.count("[") + text.count("{") > MAX_SCHEMA_DEPTH and _deeper_than(doc, MAX_SCHEMA_DEPTH):
        return False
    try:
        return bool(validator.is_valid(doc))
    except RecursionError:  # a schema whose references cost many frames per level
        return False


class _Contract:
    """One endpoint's contract, compiled once."""

    __slots__ = ("check_json", "match", "max_tokens", "names", "not_match", "validator")

    def __init__(self, endpoint: str, contract: ContractConfig) -> None:
        self.check_json = contract.format == "json"
        self.validator: Any = None
        if contract.json_schema is not None:
            cls = jsonschema.validators.validator_for(contract.json_schema)
            self.validator = cls(contract.json_schema)
        self.max_tokens = contract.max_output_tokens
        self.match = [(n, re.compile(p)) for n, p in contract.must_match.items()]
        self.not_match = [(n, re.compile(p)) for n, p in contract.must_not_match.items()]
        checks = [n for n, _ in self.match + self.not_match]
        clash = set(checks) & set(registry.FEATURES) | {n for n in checks if checks.count(n) > 1}
        if clash:
            raise ValueError(
                f"endpoints.{endpoint}: check names {sorted(clash)} are used by another feature"
            )
        names = ["json_valid"] if self.check_json else []
        names += ["schema_valid"] if self.validator is not None else []
        names += ["within_max_output_tokens"] if self.max_tokens is not None else []
        self.names = (*names, *checks)

    def add(self, event: Event, f: dict[str, float]) -> None:
        output = event.output
        # Text not captured: the checks on it have nothing to see (feature order kept).
        has_output = event.has_output
        if has_output and (self.check_json or self.validator is not None):
            # A JSON document wrapped in a ``` fence does not parse: that is a format break.
            ok, doc = _parse_json(output)
            if self.check_json:
                f["json_valid"] = 1.0 if ok else 0.0
            if self.validator is not None:
                valid = ok and _schema_valid(self.validator, doc, output)
                f["schema_valid"] = 1.0 if valid else 0.0
        if self.max_tokens is not None and event.output_tokens is not None:
            f["within_max_output_tokens"] = 1.0 if event.output_tokens <= self.max_tokens else 0.0
        if not has_output:
            return
        for name, rx in self.match:
            f[name] = 1.0 if rx.search(output) else 0.0
        for name, rx in self.not_match:  # 1.0 always means "the contract holds"
            f[name] = 0.0 if rx.search(output) else 1.0


class FeatureExtractor:
    """Turns events into ``{feature: value}``; patterns and schemas are compiled up front."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        # Preambles are anchored, so matching them case-insensitively costs little.
        self._preamble = _compile_any(list(config.preamble_patterns), re.IGNORECASE)
        self._refusal = _compile_refusals(list(config.refusal_patterns))
        self._contracts = {ep: _Contract(ep, c) for ep, c in config.endpoints.items()}

    def feature_names(self, endpoint: str) -> tuple[str, ...]:
        """Names ``extract`` can produce for ``endpoint`` (when the optional inputs are given)."""
        contract = self._contracts.get(endpoint)
        return _TEXT_FEATURES if contract is None else _TEXT_FEATURES + contract.names

    def extract(self, event: Event) -> dict[str, float]:
        """The scalar features of one event; absent optional inputs add no feature."""
        if event.kind == "feedback":
            return {} if event.feedback is None else {"feedback": event.feedback}
        # Text not captured is not an empty answer: only the event's own fields count.
        f = self._text_features(event.output) if event.has_output else {}
        if event.output_tokens is not None:
            f["output_tokens"] = log1p(event.output_tokens)
        if event.finish_reason is not None:
            f["truncated"] = 1.0 if event.finish_reason == "length" else 0.0
        if event.latency_ms is not None:
            f["latency"] = log1p(max(event.latency_ms, 0.0))
        if event.feedback is not None:
            f["feedback"] = event.feedback
        if self._contracts:
            contract = self._contracts.get(event.endpoint)
            if contract is not None:
                contract.add(event, f)
        return f

    def _text_features(self, output: str) -> dict[str, float]:
        body = output.strip()
        if not body:
            f = dict.fromkeys(_ZERO_WHEN_EMPTY, 0.0)
            f["output_chars"] = log1p(len(output))
            f["empty_output"] = 1.0
            return f
        if "\r" in body:
            body = body.replace("\r\n", "\n").replace("\r", "\n")
        text = "\n" + body  # so the first line starts with "\n" like every other

        heads = _LINE_HEADS.findall(text)
        items = fences = runs = 0
        if heads:
            # Entries never contain "|", so after joining, each one's last character can be
            # counted in C: a list item ends in the space after its marker.
            joined = "|".join(heads) + "|"
            runs = joined.count("\n") - len(heads)  # blank-run entries hold a second "\n"
            items = joined.count(" |") + (joined.count("\t|") if "\t" in body else 0)
            if "`" in body or "~" in body:
                fences = joined.count("```") + joined.count("~~~")

        # sentence_words follows str.split() words and sentences split at newlines and at
        # ".!?" before a space or tab. A word starts after each whitespace run but a trailing
        # one, a sentence after each newline run (but a trailing one) and after ".!?" + space.
        classes = text[:SENTENCE_WINDOW].encode("utf-8", "surrogatepass").translate(_CLASS_BYTES)
        x = int.from_bytes(classes, "little")
        run_ends = x & ~(x >> 8)  # class bits set in a byte but not in the next one
        words = (run_ends & _BIT0).bit_count() - (classes[-1] & 1)
        lines = (run_ends & _BIT1).bit_count() - (classes[-1] >> 1 & 1)
        sentences = lines + ((x >> 2) & (x >> 11) & _BIT0).bit_count()

        bold = ("*" in body and _BOLD_STARS.search(body) is not None) or (
            "_" in body and _BOLD_UNDERSCORES.search(body) is not None
        )
        markdown = body[0] in _MARKDOWN_FIRST and _MARKDOWN_START.match(body) is not None
        head = body[:PREFIX_WINDOW].lower()
        if "’" in head:  # typographic apostrophe: "I’m sorry" must match "i'm sorry"
            head = head.replace("’", "'")
        preamble = refusal = 0.0
        for rx in self._preamble:  # a loop, not any(): no generator to set up
            if rx.match(head):
                preamble = 1.0
                break
        for rx in self._refusal:
            if rx.search(head):
                refusal = 1.0
                break
        return {
            "output_chars": log1p(len(output)),
            "empty_output": 0.0,
            "code_fence": 1.0 if fences else 0.0,
            "markdown_start": 1.0 if markdown else 0.0,
            "markdown_bold": 1.0 if bold else 0.0,
            "list_items": log1p(items),
            "paragraphs": log1p(runs + 1),
            "sentence_words": words / sentences,
            "preamble": preamble,
            "refusal": refusal,
        }
