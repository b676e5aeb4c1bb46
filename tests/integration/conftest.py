"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driftmon.demo.tansu import EmbeddedBroker
from tests.support import create_topic


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A fresh tansu broker with the test module's ``TOPIC`` (one partition)."""
    with EmbeddedBroker(log_file=tmp_path / "broker.log") as b:
        create_topic(b.bootstrap, request.module.TOPIC, partitions=1)
        yield b
