"""The core takes plain config; driftmon.config builds it from the settings at the edge."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import driftmon
from driftmon.config import pipeline_config
from driftmon.core.detectors import DetectorConfig
from driftmon.core.features import ContractConfig, FeatureConfig
from driftmon.core.monitor import MonitorConfig
from driftmon.core.pipeline import PipelineConfig
from driftmon.core.transitions import Guard, TransitionConfig
from driftmon.settings import Settings

CORE = Path(driftmon.__file__).parent / "core"


def test_pipeline_config_carries_every_setting_the_core_reads() -> None:
    settings = Settings(
        kafka={"max_message_bytes": 4096},
        limits={"max_keys": 7, "max_transitions": 3},
        input={"format": "otlp_json", "endpoint_from": ["a", "b"], "dedup_window": 5},
        transitions={
            "alpha": 0.05,
            "stratify_by": ["segment"],
            "guards": {"refusal": {"direction": "increase", "tolerance": 5}},
            "equivalence": {"sd": 0.2, "rate_points": 2},
            "min_events": 50,
        },
        detectors={
            "events_per_false_alarm": 5000,
            "warmup_events": 120,
            "page_hinkley_k": 0.5,
            "adwin": False,
            "features": ["latency", "refusal"],
        },
        features={"preamble_patterns": ["sure"], "refusal_patterns": ["no"]},
        endpoints={"api": {"format": "json", "must_match": {"has_id": "id"}}},
    )
    assert pipeline_config(settings) == PipelineConfig(
        monitor=MonitorConfig(
            events_per_false_alarm=5000.0,
            max_keys=7,
            detector=DetectorConfig(warmup=120, k=0.5, page_hinkley=True, adwin=False),
        ),
        features=FeatureConfig(
            preamble_patterns=("sure",),
            refusal_patterns=("no",),
            endpoints={"api": ContractConfig(format="json", must_match={"has_id": "id"})},
        ),
        max_message_bytes=4096,
        only_features=frozenset({"latency", "refusal"}),
        input_format="otlp_json",
        endpoint_from=("a", "b"),
        dedup_window=5,
        transitions=TransitionConfig(
            alpha=0.05,
            equivalence_sd=0.2,
            equivalence_points=2.0,
            min_events=50,
            stratify_by=("segment",),
            guards=(("refusal", Guard("increase", 5.0)),),
            max_transitions=3,
        ),
    )


_IMPORTS = """
import json, sys
import driftmon.core.pipeline, driftmon.core.calibration, driftmon.core.units
import driftmon.core.registry, driftmon.core.protocols, driftmon.decoders
print(json.dumps(sorted(sys.modules)))
"""


def test_the_core_imports_no_settings_and_no_io_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS], check=True, capture_output=True, text=True
    )
    loaded = set(json.loads(out.stdout))
    edge = {"driftmon.settings", "driftmon.config", "pydantic", "kafka", "prometheus_client"}
    assert loaded & edge == set()
    assert not {m for m in loaded if m.startswith(("http", "urllib3", "requests"))}


def test_the_core_never_names_the_settings_or_their_edge() -> None:
    for path in CORE.glob("*.py"):
        for i, line in enumerate(path.read_text().splitlines()):
            assert not re.match(r"\s*(from|import) driftmon\.(settings|config)\b", line), (
                f"{path.name}:{i + 1}: {line.strip()}"
            )
