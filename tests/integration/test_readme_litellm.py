"""The README's LiteLLM callback, run as written: a real LiteLLM call (a mock response,
no network) logs its StandardLoggingPayload through it to the real broker, and driftmon's
decoder reads the record as an event of the tagged endpoint. The call runs in a fresh
interpreter (LiteLLM's callbacks are process-wide state)."""

from __future__ import annotations

import re
from pathlib import Path

from driftmon.core.events import Event
from driftmon.decoders import DecoderOptions, decoder
from driftmon.demo.tansu import EmbeddedBroker
from tests.litellm_support import run_python
from tests.support import consume_all, wait_for

README = Path(__file__).parents[2] / "README.md"
TOPIC = "llm-outputs-litellm"  # the broker fixture creates it

_CALL = """
import sys, time
import litellm

logger = DriftmonLogger(sys.argv[1], topic=sys.argv[2])
sent = []
send = logger.producer.send
logger.producer.send = lambda *a, **k: sent.append(send(*a, **k))
litellm.callbacks = [logger]
litellm.completion(
    model="gpt-4o",
    messages=[{"role": "user", "content": "Hi"}],
    mock_response="Sure: here it is.",
    metadata={"tags": ["endpoint:support-chat"]},
)
deadline = time.monotonic() + 60
while not sent and time.monotonic() < deadline:
    time.sleep(0.05)  # the callback runs on LiteLLM's logging worker
logger.producer.flush()
logger.producer.close()
"""


def _readme_callback() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "class DriftmonLogger" in b]
    return block


def test_the_readme_litellm_callback_feeds_driftmon(broker: EmbeddedBroker) -> None:
    run_python(_readme_callback() + _CALL, broker.bootstrap, TOPIC)
    records = wait_for(lambda: consume_all(broker.bootstrap, TOPIC, idle=1.0), timeout=60)
    (record,) = records
    assert record.key == b"support-chat"
    (event,) = decoder("auto", DecoderOptions())(record.value, max_bytes=1_000_000)
    assert isinstance(event, Event), event
    assert (event.endpoint, event.output) == ("support-chat", "Sure: here it is.")
    assert event.model.startswith("gpt-4o")
