"""The edge between the settings and the core: the core's plain config built from Settings.

:mod:`driftmon.core` never reads :class:`~driftmon.settings.Settings`; the daemon, replay
and the benchmarks build a :class:`~driftmon.core.pipeline.PipelineConfig` here and pass it.

>>> from driftmon.settings import Settings
>>> config = pipeline_config(Settings(kafka={"max_message_bytes": 4096}))
>>> config.max_message_bytes, config.monitor.detector.warmup, config.only_features
(4096, 300, None)
"""

from __future__ import annotations

from driftmon.core.detectors import DetectorConfig
from driftmon.core.features import ContractConfig, FeatureConfig
from driftmon.core.inputs import AttributionConfig
from driftmon.core.monitor import MonitorConfig
from driftmon.core.pipeline import PipelineConfig
from driftmon.core.transitions import Guard, TransitionConfig
from driftmon.settings import EndpointContract, Settings


def monitor_config(settings: Settings) -> MonitorConfig:
    d = settings.detectors
    return MonitorConfig(
        events_per_false_alarm=float(d.events_per_false_alarm),
        max_keys=settings.limits.max_keys,
        detector=DetectorConfig(
            warmup=d.warmup_events,
            k=d.page_hinkley_k,
            page_hinkley=d.page_hinkley,
            adwin=d.adwin,
        ),
        attribution=attribution_config(settings),
    )


def attribution_config(settings: Settings) -> AttributionConfig:
    a = settings.attribution
    return AttributionConfig(
        enabled=a.enabled,
        reference_events=a.reference_events,
        k=a.k,
        h=a.h,
        confirm=a.confirm,
        min_r2=a.min_r2,
        version_share=a.version_share,
    )


def contract_config(contract: EndpointContract) -> ContractConfig:
    return ContractConfig(
        format=contract.format,
        json_schema=contract.json_schema,
        max_output_tokens=contract.max_output_tokens,
        must_match=dict(contract.must_match),
        must_not_match=dict(contract.must_not_match),
    )


def feature_config(settings: Settings) -> FeatureConfig:
    fs = settings.features
    return FeatureConfig(
        preamble_patterns=tuple(fs.preamble_patterns),
        refusal_patterns=tuple(fs.refusal_patterns),
        endpoints={ep: contract_config(c) for ep, c in settings.endpoints.items()},
    )


def pipeline_config(settings: Settings) -> PipelineConfig:
    only = settings.detectors.features
    return PipelineConfig(
        monitor=monitor_config(settings),
        features=feature_config(settings),
        max_message_bytes=settings.kafka.max_message_bytes,
        only_features=frozenset(only) if only is not None else None,
        input_format=settings.input.format,
        endpoint_from=tuple(settings.input.endpoint_from),
        dedup_window=settings.input.dedup_window,
        transitions=transition_config(settings),
    )


def transition_config(settings: Settings) -> TransitionConfig:
    t = settings.transitions
    return TransitionConfig(
        enabled=t.enabled,
        alpha=t.alpha,
        input_alpha=t.input_alpha,
        equivalence_sd=t.equivalence.sd,
        equivalence_points=t.equivalence.rate_points,
        min_events=t.min_events,
        stratify_by=tuple(t.stratify_by),
        version_attributes=tuple(t.version_attributes),
        guards=tuple(
            (name, Guard(g.direction, g.tolerance)) for name, g in sorted(t.guards.items())
        ),
        contract_tolerance=t.contract_tolerance,
        max_events=t.max_events,
        max_transitions=settings.limits.max_transitions,
    )
