"""The README's LiteLLM callback, run as written: a real LiteLLM call (a mock response,
no network) logs its StandardLoggingPayload through it to the real broker, and driftmon's
decoder reads the record as an event of the tagged endpoint."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from driftmon.core.events import Event
from driftmon.decoders import DecoderOptions, decoder
from driftmon.demo.tansu import EmbeddedBroker
from tests.support import consume_all, wait_for

README = Path(__file__).parents[2] / "README.md"
TOPIC = "llm-outputs-litellm"  # the broker fixture creates it


def _readme_callback() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "class DriftmonLogger" in b]
    return block


def test_the_readme_litellm_callback_feeds_driftmon(broker: EmbeddedBroker) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network
    litellm = pytest.importorskip("litellm")
    namespace: dict[str, Any] = {}
    exec(compile(_readme_callback(), str(README), "exec"), namespace)
    logger = namespace["DriftmonLogger"](broker.bootstrap, topic=TOPIC)
    litellm.callbacks = [logger]
    try:
        litellm.completion(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hi"}],
            mock_response="Sure: here it is.",
            metadata={"tags": ["endpoint:support-chat"]},
        )
        records = wait_for(lambda: consume_all(broker.bootstrap, TOPIC, idle=1.0), timeout=60)
    finally:
        litellm.callbacks = []
        logger.producer.close()
    (record,) = records
    assert record.key == b"support-chat"
    (event,) = decoder("auto", DecoderOptions())(record.value, max_bytes=1_000_000)
    assert isinstance(event, Event), event
    assert (event.endpoint, event.output) == ("support-chat", "Sure: here it is.")
    assert event.model.startswith("gpt-4o")
