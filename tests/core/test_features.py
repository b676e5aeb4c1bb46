from __future__ import annotations

import json
from math import log1p
from pathlib import Path
from typing import Any

import pytest

from driftmon.config import feature_config
from driftmon.core.events import Event
from driftmon.core.features import (
    BUILTIN_FEATURES,
    PREFIX_WINDOW,
    SENTENCE_WINDOW,
    FeatureExtractor,
)
from driftmon.settings import EndpointContract, FeatureSettings, Settings


def extractor(settings: Settings) -> FeatureExtractor:
    return FeatureExtractor(feature_config(settings))


ALPACA = Path(__file__).parents[2].parent / "shared/data/llm_outputs/alpaca_eval"

TEXT_KEYS = {
    "output_chars",
    "empty_output",
    "code_fence",
    "markdown_start",
    "markdown_bold",
    "list_items",
    "paragraphs",
    "sentence_words",
    "preamble",
    "refusal",
}


@pytest.fixture(scope="module")
def fx() -> FeatureExtractor:
    return extractor(Settings())


def ev(output: str = "", **kw: Any) -> Event:
    return Event(kind="completion", endpoint="chat", model="m1", output=output, **kw)


def feat(fx: FeatureExtractor, output: str, name: str) -> float:
    return fx.extract(ev(output))[name]


# --- plain completion features ------------------------------------------------------------


def test_minimal_event_yields_only_text_features(fx: FeatureExtractor) -> None:
    f = fx.extract(ev("Hello world."))
    assert set(f) == TEXT_KEYS  # no tokens, finish reason, latency or feedback: no feature
    assert f["output_chars"] == pytest.approx(log1p(12))
    assert f["empty_output"] == 0.0


@pytest.mark.parametrize("output", ["", "   ", "\n\n \t\n"])
def test_empty_output(fx: FeatureExtractor, output: str) -> None:
    f = fx.extract(ev(output))
    assert f["empty_output"] == 1.0
    assert f["output_chars"] == pytest.approx(log1p(len(output)))
    assert all(f[k] == 0.0 for k in TEXT_KEYS - {"empty_output", "output_chars"})


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Here:\n```python\nprint(1)\n```", 1.0),
        ("```\nfirst line is a fence\n```", 1.0),
        ("~~~\ntilde fence\n~~~", 1.0),
        ("1. Run:\n   ```bash\n   ls\n   ```", 1.0),  # indented inside a list item
        ("Type ```x``` inline, or `y`.", 0.0),  # not at a line start
        ("No code here.\nNone at all.", 0.0),
    ],
)
def test_code_fence(fx: FeatureExtractor, output: str, expected: float) -> None:
    assert feat(fx, output, "code_fence") == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("# Title\n\nText.", 1.0),
        ("### Deeper title", 1.0),
        ("- item\n- item", 1.0),
        ("* item", 1.0),
        ("+ item", 1.0),
        ("1. First step", 1.0),
        ("1) First step", 1.0),
        ("\n\n  - after blank lines", 1.0),
        ("Plain answer.\n# Header later", 0.0),
        ("#hashtag is not a header", 0.0),
        ("**Bold** is not a list", 0.0),
        ("-5 degrees", 0.0),
    ],
)
def test_markdown_start(fx: FeatureExtractor, output: str, expected: float) -> None:
    assert feat(fx, output, "markdown_start") == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("This is **important** text.", 1.0),
        ("**Heading**\nbody", 1.0),
        ("Also __bold__ this way.", 1.0),
        ("a * b * c", 0.0),
        ("x**2 + y", 0.0),
        ("** spaced out **", 0.0),
        ("Use `__init__` or call __init__() here.", 0.0),
        ("snake_case__names stay plain", 0.0),
    ],
)
def test_markdown_bold(fx: FeatureExtractor, output: str, expected: float) -> None:
    assert feat(fx, output, "markdown_bold") == expected


def test_list_items_counts_bullets_and_numbered_items(fx: FeatureExtractor) -> None:
    text = "Intro:\n\n1. One\n2. Two\n10) Ten\n\n- a\n  - nested\n\t* tabbed\n+ c\n\nEnd."
    assert feat(fx, text, "list_items") == pytest.approx(log1p(7))


def test_list_items_ignores_look_alikes(fx: FeatureExtractor) -> None:
    text = "-not a list\n*emphasis*\n**Bold**\n1.5 million\n2019 was a year\n---"
    assert feat(fx, text, "list_items") == 0.0


@pytest.mark.parametrize(
    ("output", "blocks"),
    [
        ("One line", 1),
        ("Line one\nline two", 1),
        ("A\n\nB", 2),
        ("A\n\nB\n\n\n\nC", 3),  # a run of blank lines separates once
        ("A\n  \nB", 2),  # a whitespace-only line is blank too
        ("\n\nA\n\n", 1),  # leading/trailing blank lines separate nothing
        ("A\r\n\r\nB", 2),
        ("Intro:\n\n- a\n- b\n\n```\ncode\n```", 3),
    ],
)
def test_paragraphs(fx: FeatureExtractor, output: str, blocks: int) -> None:
    assert feat(fx, output, "paragraphs") == pytest.approx(log1p(blocks))


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Hello world. This is a test.", 3.0),
        ("One two three\nFour five", 2.5),
        ("Really? Yes! Fine.", 1.0),
        ("Version 3.14 is out.", 4.0),  # no space after the dot: not a sentence end
        ("A.\n\n\nB.", 1.0),
        ("| a   |   b |\n|---|---|", 3.0),  # padding spaces are not words
        ("  Leading and trailing spaces.  ", 4.0),
    ],
)
def test_sentence_words(fx: FeatureExtractor, output: str, expected: float) -> None:
    assert feat(fx, output, "sentence_words") == pytest.approx(expected)


def test_sentence_words_reads_only_the_window(fx: FeatureExtractor) -> None:
    text = "Hi there. " * (SENTENCE_WINDOW // 10) + "and then one very long sentence " * 100
    assert feat(fx, text, "sentence_words") == pytest.approx(2.0, abs=0.1)


def test_sentence_words_handles_non_ascii(fx: FeatureExtractor) -> None:
    assert feat(fx, "Ça va très bien. Überall grüne Bäume — schön!", "sentence_words") == 4.5


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("Sure! Here is the code.", 1.0),
        ("Certainly, let me explain.", 1.0),
        ("  \nOf course. The answer is 4.", 1.0),
        ("Here are five ideas:", 1.0),
        ("SURE thing.", 1.0),
        ("I'd be happy to help with that.", 1.0),
        ("Great question! It depends.", 1.0),
        ("Surely you jest.", 0.0),  # "sure\b" must not match "Surely"
        ("Heresy is a word.", 0.0),
        ("The answer is: sure.", 0.0),  # not at the start
        ("Paris is the capital of France.", 0.0),
    ],
)
def test_preamble(fx: FeatureExtractor, output: str, expected: float) -> None:
    assert feat(fx, output, "preamble") == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("I'm sorry, but I can't help with that.", 1.0),
        ("I’m sorry, but I can’t assist with that request.", 1.0),
        ("Sorry, but I can't assist with that.", 1.0),
        ("As an AI language model, I cannot browse the internet.", 1.0),
        ("I cannot provide medical advice.", 1.0),
        ("I must decline.", 1.0),
        ("Sure. Some background first.\n\nI am not able to share that.", 1.0),
        ("I can help with that! Here is how.", 0.0),
        ("The sorry state of affairs is documented.", 0.0),
        ("x" * PREFIX_WINDOW + " I'm sorry, but I cannot help.", 0.0),  # past the window
    ],
)
def test_refusal(fx: FeatureExtractor, output: str, expected: float) -> None:
    assert feat(fx, output, "refusal") == expected


def test_custom_patterns_with_upper_case_and_inline_flags() -> None:
    settings = Settings(
        features=FeatureSettings(
            preamble_patterns=[r"Well\b", r"(?i)okay\b", r"it's a\b"],
            refusal_patterns=[r"NO WAY", r"(?s)nope.*never", r"(?i)nah"],
        )
    )
    fx = extractor(settings)
    assert feat(fx, "well, yes.", "preamble") == 1.0
    assert feat(fx, "Okay then.", "preamble") == 1.0
    assert feat(fx, "Wellness matters.", "preamble") == 0.0
    assert feat(fx, "It’s a deal.", "preamble") == 1.0  # typographic apostrophe
    assert feat(fx, "Its a deal.", "preamble") == 0.0
    assert feat(fx, "Ha, no way.", "refusal") == 1.0
    assert feat(fx, "Nope.\nNever.", "refusal") == 1.0
    assert feat(fx, "NAH.", "refusal") == 1.0
    assert feat(fx, "Yes, here it is.", "refusal") == 0.0


def test_empty_pattern_lists_match_nothing() -> None:
    fx = extractor(Settings(features=FeatureSettings(preamble_patterns=[], refusal_patterns=[])))
    f = fx.extract(ev("Sure! I'm sorry, but I can't help."))
    assert f["preamble"] == 0.0
    assert f["refusal"] == 0.0


# --- optional event fields ----------------------------------------------------------------


def test_optional_fields(fx: FeatureExtractor) -> None:
    f = fx.extract(ev("Hi.", output_tokens=127, finish_reason="length", latency_ms=99.0))
    assert f["output_tokens"] == pytest.approx(log1p(127))
    assert f["truncated"] == 1.0
    assert f["latency"] == pytest.approx(log1p(99.0))
    assert "feedback" not in f
    assert fx.extract(ev("Hi.", finish_reason="stop"))["truncated"] == 0.0
    assert fx.extract(ev("Hi.", output_tokens=0))["output_tokens"] == 0.0


def test_inline_feedback(fx: FeatureExtractor) -> None:
    assert fx.extract(ev("Hi.", feedback=-0.5))["feedback"] == -0.5


def test_feedback_event_yields_only_feedback(fx: FeatureExtractor) -> None:
    e = Event(kind="feedback", endpoint="chat", model="m1", feedback=1.0, feedback_name="thumbs")
    assert fx.extract(e) == {"feedback": 1.0}
    assert fx.extract(Event(kind="feedback", endpoint="chat", model="m1")) == {}


# --- endpoint contracts -------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "label": {"enum": ["spam", "ham"]}},
    "required": ["id", "label"],
}


@pytest.fixture(scope="module")
def cfx() -> FeatureExtractor:
    return extractor(
        Settings(
            endpoints={
                "api": EndpointContract(
                    format="json",
                    json_schema=SCHEMA,
                    max_output_tokens=100,
                    must_match={"has_label": r'"label"'},
                    must_not_match={"no_apology": r"(?i)\bsorry\b"},
                ),
                "schema_only": EndpointContract(json_schema=SCHEMA),
            }
        )
    )


def api(output: str, **kw: Any) -> Event:
    return Event(kind="completion", endpoint="api", model="m1", output=output, **kw)


def test_contract_holds(cfx: FeatureExtractor) -> None:
    f = cfx.extract(api('{"id": 7, "label": "spam"}', output_tokens=12))
    assert f["json_valid"] == 1.0
    assert f["schema_valid"] == 1.0
    assert f["within_max_output_tokens"] == 1.0
    assert f["has_label"] == 1.0
    assert f["no_apology"] == 1.0


def test_fenced_json_is_a_format_break(cfx: FeatureExtractor) -> None:
    f = cfx.extract(api('```json\n{"id": 7, "label": "spam"}\n```'))
    assert f["json_valid"] == 0.0
    assert f["schema_valid"] == 0.0
    assert f["code_fence"] == 1.0


@pytest.mark.parametrize(
    ("output", "json_valid", "schema_valid"),
    [
        ('  {"id": 7, "label": "ham"}\n', 1.0, 1.0),
        ('{"id": 7}', 1.0, 0.0),  # valid JSON, missing a required field
        ('{"id": "7", "label": "ham"}', 1.0, 0.0),
        ('Sure! {"id": 7, "label": "ham"}', 0.0, 0.0),
        ('{"id": 7, "label": "ham"', 0.0, 0.0),
        ("NaN", 0.0, 0.0),
        ("[1e400]", 1.0, 0.0),  # valid JSON that orjson refuses: json is the fallback
        ("", 0.0, 0.0),
    ],
)
def test_json_and_schema(
    cfx: FeatureExtractor, output: str, json_valid: float, schema_valid: float
) -> None:
    f = cfx.extract(api(output))
    assert (f["json_valid"], f["schema_valid"]) == (json_valid, schema_valid)


def test_max_output_tokens(cfx: FeatureExtractor) -> None:
    assert cfx.extract(api("{}", output_tokens=100))["within_max_output_tokens"] == 1.0
    assert cfx.extract(api("{}", output_tokens=101))["within_max_output_tokens"] == 0.0
    assert "within_max_output_tokens" not in cfx.extract(api("{}"))


def test_regex_checks(cfx: FeatureExtractor) -> None:
    f = cfx.extract(api("Sorry, no JSON today."))
    assert f["has_label"] == 0.0
    assert f["no_apology"] == 0.0


def test_schema_without_json_format(cfx: FeatureExtractor) -> None:
    e = Event(kind="completion", endpoint="schema_only", model="m", output='{"id": 1}')
    f = cfx.extract(e)
    assert f["schema_valid"] == 0.0
    assert "json_valid" not in f


def test_contracts_apply_only_to_their_endpoint(cfx: FeatureExtractor) -> None:
    f = cfx.extract(ev('{"id": 7, "label": "spam"}', output_tokens=3))
    assert set(f) == TEXT_KEYS | {"output_tokens"}


def test_feature_names(cfx: FeatureExtractor) -> None:
    names = cfx.feature_names("api")
    assert len(names) == len(set(names))
    full = api('{"id": 7, "label": "spam"}', output_tokens=5, finish_reason="stop")
    full.latency_ms, full.feedback = 10.0, 1.0
    assert set(cfx.extract(full)) == set(names)
    assert {"json_valid", "schema_valid", "has_label", "no_apology"} <= set(names)
    plain = set(cfx.feature_names("chat"))
    assert plain == TEXT_KEYS | {"output_tokens", "truncated", "latency", "feedback"}
    assert set(cfx.feature_names("schema_only")) == plain | {"schema_valid"}


def test_builtin_features_cover_the_spec_table() -> None:
    assert len(BUILTIN_FEATURES) == len(set(BUILTIN_FEATURES))
    assert TEXT_KEYS | {"output_tokens", "json_valid", "schema_valid", "truncated"} <= set(
        BUILTIN_FEATURES
    )
    assert "embedding_distance" not in BUILTIN_FEATURES


@pytest.mark.parametrize(
    "contract",
    [
        EndpointContract(must_match={"refusal": "x"}),
        EndpointContract(must_match={"check": "x"}, must_not_match={"check": "y"}),
    ],
)
def test_check_names_must_not_clash(contract: EndpointContract) -> None:
    with pytest.raises(ValueError, match="check names"):
        extractor(Settings(endpoints={"api": contract}))


# --- real outputs -------------------------------------------------------------------------


def _outputs(name: str, ids: list[int]) -> list[str]:
    rows = [json.loads(line) for line in (ALPACA / f"{name}.jsonl").open()]
    return [rows[i]["output"] or "" for i in ids]


def test_llama3_writes_bold_markdown_where_llama2_did_not(fx: FeatureExtractor) -> None:
    if not (ALPACA / "perm_seed0.json").exists():
        pytest.skip(f"shared alpaca_eval data not present at {ALPACA} (../shared/data)")
    ids = json.loads((ALPACA / "perm_seed0.json").read_text())[:200]  # not in file order
    means = {}
    for name in ("llama-2-70b-chat-hf", "Meta-Llama-3-70B-Instruct"):
        bold = [fx.extract(ev(o))["markdown_bold"] for o in _outputs(name, ids)]
        means[name] = sum(bold) / len(bold)
    # The data README reports 1% -> 64% over all 805 answers.
    assert means["llama-2-70b-chat-hf"] < 0.1
    assert means["Meta-Llama-3-70B-Instruct"] > 0.4
