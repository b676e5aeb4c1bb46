"""Fuzz the replay core with mutated real-ish events; prints JSON (issue 18).

Events from ``driftmon.demo.synthetic`` are mutated at random (seeded): fields deleted, values
swapped for other JSON types, deep nesting, huge and invalid-UTF-8 values, random bytes,
truncations, bit flips, odd labels, OpenTelemetry shapes, and answers to endpoints with
JSON contracts (one with the self-referencing schema of issue 18). Every record goes
through :class:`driftmon.core.pipeline.Pipeline`, the core shared by replay and the
daemon; then a smaller run goes through :func:`driftmon.replay.replay` over a file.

    python benchmarks/fuzz.py [--events 1000000] [--seed 1] [--replay-events 100000]

Fails (exit 1) if any record raised out of the pipeline or was not counted exactly once
as accepted or rejected. ``events_per_second`` times the pipeline only, not the mutation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from driftmon import logs
from driftmon.config import pipeline_config
from driftmon.core.pipeline import Pipeline
from driftmon.demo.synthetic import generate
from driftmon.replay import replay
from driftmon.settings import Settings

SELF_REFERENCING: Final = {"type": "array", "items": {"$ref": "#"}}
SQL_SCHEMA: Final = {
    "type": "object",
    "required": ["query", "explanation"],
    "properties": {
        "query": {"type": "string"},
        "explanation": {"type": "string"},
        "tables": {"type": "array", "items": {"type": "string"}},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "nested": {"$ref": "#"},
    },
}
FUZZ_ENDPOINTS: Final[dict[str, Any]] = {
    "sql-assistant": {"format": "json", "json_schema": SQL_SCHEMA, "max_output_tokens": 400},
    "poison": {"format": "json", "json_schema": SELF_REFERENCING},
    "support-chat": {
        "max_output_tokens": 500,
        "must_not_match": {"apology": "(?i)sorry|apolog"},
        "must_match": {"has_link": r"https?://"},
    },
}
"""Contracts of the fuzzed stream: every JSON-parsing and schema path is exercised."""

# The record of issue 18: 300 nested brackets under a self-referencing schema.
POISON: Final = json.dumps({"endpoint": "poison", "model": "m", "output": "[" * 300 + "]" * 300})

_FIELDS: Final = (
    "kind",
    "id",
    "timestamp",
    "endpoint",
    "model",
    "requested_model",
    "provider",
    "prompt_version",
    "output",
    "input",
    "input_tokens",
    "output_tokens",
    "finish_reason",
    "latency_ms",
    "feedback",
    "value",
    "attributes",
    "gen_ai.output.messages",
    "gen_ai.completion.0.content",
    "gen_ai.response.finish_reasons",
    "gen_ai.request.model",
    "driftmon.endpoint",
)
_ODD_LABELS: Final = (
    "",
    " ",
    'quote"d',
    "back\\slash",
    "new\nline",
    "tab\there",
    "ünïcødé-端点",
    "emoji-🙂",
    "x" * 256,
    "x" * 257,
    "\x00nul",
    "poison",
)
_JSON_ANSWERS: Final = (
    "1e400",
    '{"query": "SELECT 1", "explanation": "x", "confidence": 1e400}',
    "NaN",
    '{"a": NaN}',
    "Infinity",
    '{"query": "SELECT 1", "explanation": "ok"}',
    '```json\n{"query": "SELECT 1"}\n```',
    '{"query": 12345678901234567890123456789, "explanation": "big int"}',
    '"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["',
    "[]",
    "{}",
    "null",
    "",
    "{",
    '{"query": "\\ud800", "explanation": "lone surrogate"}',
)
_DEPTHS: Final = (2, 10, 63, 64, 65, 100, 300, 1000, 1024, 1025, 5000, 50_000)
_BAD_UTF8: Final = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80",
)


def _random_value(r: random.Random, depth: int = 0) -> Any:
    """A value of a random JSON type (and a few non-JSON floats)."""
    pick = r.randrange(12 if depth < 3 else 9)
    if pick == 0:
        return None
    if pick == 1:
        return r.random() < 0.5
    if pick == 2:
        return r.choice((0, -1, 1, 2**31, -(2**63), 2**64, 10**30))
    if pick == 3:
        return r.choice((0.0, -0.0, 1.5, -1e308, 1e308, 1e-320))
    if pick == 4:
        return r.choice(("", "x", "12", "1e3", "2026-13-45T25:61:00Z", "\u2028", "\ud800"))
    if pick == 5:
        return r.choice((float("nan"), float("inf"), float("-inf")))  # written as NaN etc.
    if pick in (6, 7, 8):
        return "".join(r.choice('ab \n{}[]"\\é') for _ in range(r.randrange(40)))
    if pick in (9, 10):
        return [_random_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {f"k{i}": _random_value(r, depth + 1) for i in range(r.randrange(4))}


def _nested(r: random.Random, depth: int) -> str:
    """JSON text nesting arrays or objects ``depth`` levels deep."""
    opener, closer = r.choice((("[", "]"), ('{"a":', "}")))
    return opener * depth + "1" + closer * depth


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


class Mutator:
    """Seeded mutations of a fixed pool of synthetic events; ``kinds`` counts each kind."""

    def __init__(self, seed: int, pool: int = 20_000, huge_rate: float = 0.004) -> None:
        self.r = random.Random(seed)
        self.base = [json.loads(line) for line in generate(pool, n_keys=8, seed=seed)]
        self.kinds: Counter[str] = Counter()
        self.huge_sizes = (10_000, 70_000, 300_000, 1_100_000)
        self._ops: list[tuple[str, float, Callable[[dict[str, Any]], bytes]]] = [
            ("unchanged", 0.25, self._unchanged),
            ("delete_fields", 0.10, self._delete),
            ("type_swap", 0.15, self._type_swap),
            ("deep_nesting", 0.08, self._deep),
            ("json_answer", 0.07, self._json_answer),
            ("huge_value", huge_rate, self._huge),
            ("invalid_utf8", 0.07, self._invalid_utf8),
            ("random_bytes", 0.05, self._random_bytes),
            ("truncated", 0.05, self._truncate),
            ("bit_flips", 0.06, self._flip),
            ("issue_poison", 0.02, lambda _: POISON.encode()),
            ("otel_shape", 0.04, self._otel),
            ("not_an_object", 0.02, self._not_object),
            ("odd_label", 0.03, self._label),
        ]
        weights = [w for _, w, _ in self._ops]
        total = sum(weights)
        acc = 0.0
        self._cum = []
        for w in weights:
            acc += w / total
            self._cum.append(acc)

    def records(self, n: int) -> Iterator[bytes]:
        r, base, ops, cum = self.r, self.base, self._ops, self._cum
        for i in range(n):
            doc = dict(base[i % len(base)])
            name, _, op = r.choices(ops, cum_weights=cum)[0]
            self.kinds[name] += 1
            yield op(doc)

    def _unchanged(self, doc: dict[str, Any]) -> bytes:
        return _dumps(doc)

    def _delete(self, doc: dict[str, Any]) -> bytes:
        for key in self.r.sample(sorted(doc), min(len(doc), self.r.randint(1, 3))):
            del doc[key]
        return _dumps(doc)

    def _type_swap(self, doc: dict[str, Any]) -> bytes:
        for _ in range(self.r.randint(1, 2)):
            doc[self.r.choice(_FIELDS)] = _random_value(self.r)
        return _dumps(doc)

    def _deep(self, doc: dict[str, Any]) -> bytes:
        r = self.r
        depth = r.choice(_DEPTHS)
        where = r.randrange(3)
        if where == 0:  # an answer nested deep, to an endpoint with a JSON contract
            doc["endpoint"] = r.choice(("poison", "sql-assistant"))
            doc["output"] = _nested(r, depth)
        elif where == 1:  # the record itself nested deep (spliced: json.dumps recurses)
            doc.pop("attributes", None)
            return _dumps(doc)[:-1] + b', "attributes": {"a": ' + _nested(r, depth).encode() + b"}}"
        else:
            doc["output"] = _nested(r, depth)  # as text, to a plain-text endpoint
        return _dumps(doc)

    def _json_answer(self, doc: dict[str, Any]) -> bytes:
        doc["endpoint"] = self.r.choice(("poison", "sql-assistant"))
        doc["output"] = self.r.choice(_JSON_ANSWERS)
        return _dumps(doc)

    def _huge(self, doc: dict[str, Any]) -> bytes:
        r = self.r
        size = r.choices(self.huge_sizes, weights=(60, 30, 8, 2))[0]
        field = r.choice(("output", "output", "input", "endpoint", "id", "prompt_version"))
        unit = r.choice(("a", "é", "[", "[]", "**bold** ", "\n- item ", "{}", "🙂"))
        doc[field] = unit * (size // len(unit.encode()))
        if r.random() < 0.3:
            doc["endpoint"] = r.choice(("poison", "sql-assistant"))
        return _dumps(doc)

    def _invalid_utf8(self, doc: dict[str, Any]) -> bytes:
        raw = bytearray(_dumps(doc))
        for _ in range(self.r.randint(1, 3)):
            at = self.r.randrange(len(raw) + 1)
            raw[at:at] = self.r.choice(_BAD_UTF8)
        return bytes(raw)

    def _random_bytes(self, _: dict[str, Any]) -> bytes:
        return self.r.randbytes(self.r.choice((0, 1, 2, 16, 300, 4000)))

    def _truncate(self, doc: dict[str, Any]) -> bytes:
        raw = _dumps(doc)
        return raw[: self.r.randrange(len(raw))]

    def _flip(self, doc: dict[str, Any]) -> bytes:
        raw = bytearray(_dumps(doc))
        for _ in range(self.r.randint(1, 5)):
            raw[self.r.randrange(len(raw))] ^= 1 << self.r.randrange(8)
        return bytes(raw)

    def _otel(self, doc: dict[str, Any]) -> bytes:
        r = self.r
        output = doc.pop("output", "")
        doc["driftmon.endpoint"] = doc.pop("endpoint", "support-chat")
        doc["gen_ai.response.model"] = doc.pop("model", "m")
        shapes: list[Any] = [
            [{"role": "assistant", "parts": [{"type": "text", "content": output}]}],
            json.dumps([{"parts": [{"type": "text", "content": output}]}]),
            [{"parts": [{"type": "text", "content": 42}]}],
            [{"parts": "not a list"}],
            ["not an object"],
            "[not json",
            {"parts": []},
            [{"parts": [{"type": "image"}, {"type": "text", "content": output}]}],
        ]
        doc["gen_ai.output.messages"] = r.choice(shapes)
        if r.random() < 0.3:
            doc["gen_ai.response.finish_reasons"] = r.choice((["length"], [], [3], "stop"))
        return _dumps(doc)

    def _not_object(self, doc: dict[str, Any]) -> bytes:
        return self.r.choice(
            (_dumps(list(doc.values())[:3]), b'"a string"', b"42", b"null", b"", b"  ", b"[]")
        )

    def _label(self, doc: dict[str, Any]) -> bytes:
        doc[self.r.choice(("endpoint", "model"))] = self.r.choice(_ODD_LABELS)
        return _dumps(doc)


def fuzz_pipeline(n: int, seed: int, chunk: int = 10_000) -> dict[str, Any]:
    """``n`` mutated records through one Pipeline; counts and pipeline-only rate."""
    settings = Settings(endpoints=FUZZ_ENDPOINTS, embeddings={"enabled": False})
    pipeline = Pipeline(pipeline_config(settings))
    mutator = Mutator(seed)
    escaped: Counter[str] = Counter()
    internal: Counter[str] = Counter()
    seconds = 0.0
    done = 0
    while done < n:
        batch = list(mutator.records(min(chunk, n - done)))
        start = time.perf_counter()
        for i, raw in enumerate(batch, done):
            try:
                out = pipeline.process(raw, i)
            except Exception as exc:  # what this benchmark exists to find
                escaped[type(exc).__name__] += 1
                continue
            if out.rejection is not None and out.rejection.reason == "internal_error":
                internal[out.rejection.detail] += 1
        seconds += time.perf_counter() - start
        done += len(batch)
    rejected = sum(pipeline.rejected.values())
    return {
        "records": n,
        "accepted": pipeline.accepted,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(pipeline.rejected.items())),
        "internal_error_types": dict(sorted(internal.items())),
        "escaped_exceptions": dict(sorted(escaped.items())),
        "counted_once": pipeline.accepted + rejected == n and not escaped,
        "keys": len(pipeline.monitor),
        "mutations": dict(sorted(mutator.kinds.items())),
        "pipeline_seconds": round(seconds, 2),
        "events_per_second": round(n / seconds),
    }


def fuzz_replay(n: int, seed: int) -> dict[str, Any]:
    """``n`` mutated records written to a JSONL file and run through ``replay``.

    Replay reads lines, so a mutation holding a newline becomes several records and blank
    lines are none: the check is that every record replay counted is accepted or rejected.
    """
    settings = Settings(endpoints=FUZZ_ENDPOINTS, embeddings={"enabled": False})
    mutator = Mutator(seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        with open(path, "wb") as fh:
            for raw in mutator.records(n):
                fh.write(raw + b"\n")
        start = time.perf_counter()
        result = replay([str(path)], settings)
        seconds = time.perf_counter() - start
    rejected = sum(result.rejected.values())
    return {
        "lines_written": n,
        "records": result.records,
        "accepted": result.accepted,
        "rejected": rejected,
        "rejected_by_reason": dict(sorted(result.rejected.items())),
        "counted_once": result.accepted + rejected == result.records,
        "events_per_second": round(result.records / seconds),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--replay-events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logs.configure("warning", "json")  # replay logs its summary; stdout is the report
    core = fuzz_pipeline(args.events, args.seed)
    via_replay = fuzz_replay(args.replay_events, args.seed) if args.replay_events else None
    ok = core["counted_once"] and (via_replay is None or via_replay["counted_once"])
    print(
        json.dumps(
            {
                "benchmark": "fuzz",
                "seed": args.seed,
                "ok": ok,
                "pipeline": core,
                "replay": via_replay,
            },
            indent=1,
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
