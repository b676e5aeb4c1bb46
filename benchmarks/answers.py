"""Real LLM answers for the embedding benchmarks, read in place from ``../shared`` (third
party data, CC BY-NC: never copied into this repository). No driftmon imports, so that
``onnx_backend.py`` can use it from an environment without driftmon."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared/data/llm_outputs/alpaca_eval/gpt4_0613.jsonl"


def real_answers(n: int) -> list[str]:
    """The first ``n`` non-blank answers of gpt-4-0613 on AlpacaEval."""
    out = []
    with open(DATA, encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line).get("output")
            if isinstance(text, str) and text.strip():
                out.append(text)
            if len(out) == n:
                break
    return out
