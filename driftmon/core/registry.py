"""Every built-in feature in one table: its name, how it is watched, what produces it, its unit.

A feature is either ``continuous`` (a measurement: standardised against its reference) or a
``rate`` (a 0/1 value whose mean is watched). The kind decides the detectors' calibration,
so it is declared here, once, and everything else derives from it: the detectors' kinds
(:func:`driftmon.core.detectors.feature_kind`), the units shown to people
(:mod:`driftmon.core.units`) and the names the extractor produces
(:data:`driftmon.core.features.BUILTIN_FEATURES`). A kind other than those two is an error
when the feature is registered. The table is read when modules are imported and extractors
and streams are built, never per event.

Named contract checks (``must_match`` / ``must_not_match``) are configured per endpoint,
so they are not in this table: :func:`check_feature` describes one (always a rate), and
:class:`driftmon.core.features.FeatureExtractor` refuses a check name that is registered
here.

>>> FEATURES["output_chars"].kind, FEATURES["output_chars"].unit
('continuous', 'characters')
>>> check_feature("must_cite_source").kind
'rate'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

FeatureKind = Literal["continuous", "rate"]
Extractor = Literal["text", "event", "contract", "embedding"]
"""What produces a feature. ``text``: the answer's text
(``FeatureExtractor._text_features``); ``event``: the event's own fields (tokens, finish
reason, latency, feedback); ``contract``: an endpoint's contract; ``embedding``: the
sampled embedding path (:meth:`driftmon.core.monitor.Monitor.update_embedding`)."""

KINDS: Final = get_args(FeatureKind)
EXTRACTORS: Final = get_args(Extractor)
RATE_UNIT: Final = "%"


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature. ``log_scale``: fed to the detectors as ``log1p(value)`` and shown as
    the value (a count); otherwise shown as fed, rates in percent."""

    name: str
    kind: FeatureKind
    extractor: Extractor
    unit: str = RATE_UNIT
    log_scale: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.extractor not in EXTRACTORS:
            raise ValueError(
                f"feature {self.name!r}: extractor {self.extractor!r} is not one of {EXTRACTORS}"
            )
        if (self.kind == "rate") != (self.unit == RATE_UNIT) or (
            self.kind == "rate" and self.log_scale
        ):
            raise ValueError(f"feature {self.name!r}: a rate, and only a rate, is shown in %")


FEATURES: dict[str, Feature] = {}
"""Registered features by name, in registration order (the order extractors list them)."""


def register(feature: Feature) -> Feature:
    """Add a feature to :data:`FEATURES`; a name can be registered once."""
    if feature.name in FEATURES:
        raise ValueError(f"feature {feature.name!r} is already registered")
    FEATURES[feature.name] = feature
    return feature


def check_feature(name: str) -> Feature:
    """A named contract check of an endpoint: 1.0 when the contract holds, watched as a rate."""
    return Feature(name, "rate", "contract")


def names(*extractors: Extractor) -> tuple[str, ...]:
    """Registered names produced by ``extractors``, in registration order."""
    return tuple(f.name for f in FEATURES.values() if f.extractor in extractors)


for _feature in (
    Feature("output_chars", "continuous", "text", "characters", log_scale=True),
    Feature("output_tokens", "continuous", "event", "tokens", log_scale=True),
    Feature("empty_output", "rate", "text"),
    Feature("json_valid", "rate", "contract"),
    Feature("schema_valid", "rate", "contract"),
    Feature("within_max_output_tokens", "rate", "contract"),
    Feature("code_fence", "rate", "text"),
    Feature("markdown_start", "rate", "text"),
    Feature("markdown_bold", "rate", "text"),
    Feature("list_items", "continuous", "text", "list items", log_scale=True),
    Feature("paragraphs", "continuous", "text", "paragraphs", log_scale=True),
    Feature("sentence_words", "continuous", "text", "words"),
    Feature("preamble", "rate", "text"),
    Feature("refusal", "rate", "text"),
    Feature("truncated", "rate", "event"),
    Feature("feedback", "continuous", "event", "score"),
    Feature("latency", "continuous", "event", "ms", log_scale=True),
    # Mahalanobis distance of a sampled embedding to its key's reference.
    Feature("embedding_distance", "continuous", "embedding", "distance"),
    # The MEWMA detector on the whole vector: a detection's baseline is its threshold,
    # current its statistic.
    Feature("embedding", "continuous", "embedding", "statistic"),
):
    register(_feature)
