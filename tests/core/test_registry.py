"""The feature registry: one declaration per feature, everything else derived from it."""

from __future__ import annotations

import pytest

from driftmon.config import feature_config
from driftmon.core import registry
from driftmon.core.detectors import CONTINUOUS_FEATURES, feature_kind
from driftmon.core.events import Event
from driftmon.core.features import BUILTIN_FEATURES, FeatureExtractor
from driftmon.core.registry import FEATURES, Feature, check_feature, register
from driftmon.core.units import LOG_FEATURES, PLAIN_FEATURES, to_display, unit
from driftmon.settings import EndpointContract, Settings


def test_an_unknown_kind_or_extractor_is_an_error() -> None:
    with pytest.raises(ValueError, match="kind 'categorical'"):
        Feature("colour", "categorical", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="extractor 'prompt'"):
        Feature("colour", "rate", "prompt")  # type: ignore[arg-type]


def test_a_rate_and_only_a_rate_is_shown_in_percent() -> None:
    with pytest.raises(ValueError, match="only a rate"):
        Feature("share", "rate", "text", unit="share")
    with pytest.raises(ValueError, match="only a rate"):
        Feature("size", "continuous", "text")
    with pytest.raises(ValueError, match="only a rate"):
        Feature("share", "rate", "text", log_scale=True)


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(Feature("refusal", "rate", "text"))


def test_the_detectors_kinds_come_from_the_registry() -> None:
    continuous = {name for name, f in FEATURES.items() if f.kind == "continuous"}
    assert continuous == CONTINUOUS_FEATURES
    for name, f in FEATURES.items():
        assert feature_kind(name) == ("continuous" if f.kind == "continuous" else "binary")
    assert check_feature("must_cite_source").kind == "rate"
    assert feature_kind("must_cite_source") == "binary"


def test_every_registered_feature_has_its_unit() -> None:
    for name, f in FEATURES.items():
        assert unit(name) == f.unit
        assert (name in LOG_FEATURES) == f.log_scale
        assert (name in PLAIN_FEATURES) == (f.kind == "continuous" and not f.log_scale)
        if f.kind == "rate":
            assert unit(name) == "%" and to_display(name, 0.25) == 25.0
        else:
            assert unit(name) != "%"


def test_the_extractor_produces_exactly_the_registered_features_of_its_groups() -> None:
    contract = EndpointContract(
        format="json",
        json_schema={"type": "object"},
        max_output_tokens=10,
        must_match={"has_id": "id"},
    )
    fx = FeatureExtractor(feature_config(Settings(endpoints={"api": contract})))
    full = Event(
        kind="completion",
        endpoint="api",
        model="m",
        output='{"id": 1}',
        output_tokens=4,
        finish_reason="stop",
        latency_ms=120.0,
        feedback=1.0,
    )
    produced = set(fx.extract(full))
    assert produced == set(registry.names("text", "event", "contract")) | {"has_id"}
    assert set(fx.feature_names("api")) == produced
    assert set(fx.feature_names("chat")) == set(registry.names("text", "event"))
    assert registry.names("text", "event", "contract") == BUILTIN_FEATURES
    assert {f.extractor for f in FEATURES.values()} == set(registry.EXTRACTORS)


@pytest.mark.parametrize("name", ["embedding_distance", "embedding", "latency"])
def test_a_check_may_not_take_a_registered_name(name: str) -> None:
    settings = Settings(endpoints={"api": EndpointContract(must_match={name: "x"})})
    with pytest.raises(ValueError, match="check names"):
        FeatureExtractor(feature_config(settings))
