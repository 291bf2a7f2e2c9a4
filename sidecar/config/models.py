"""The configuration contract: pydantic models for the YAML file (DESIGN.md section 3).

Every field carries a one-line description; models are frozen and reject unknown keys.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator

from sidecar.config.experiments import (
    AssignmentConfig,
    CanaryConfig,
    ExperimentConfig,
    UnitSource,
)
from sidecar.config.security import (
    RedactConfig,
    TlsClientConfig,
    TlsServerConfig,
    check_url,
    mask_url,
)
from sidecar.export.settings import ExportConfig
from sidecar.provenance import ModelProvenance
from sidecar.resilience.breaker import BreakerConfig
from sidecar.resilience.fallback import FallbackConfig
from sidecar.triggers.config import TriggerConfig

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "Config",
    "MirrorShadowConfig",
    "RouteConfig",
    "ShutdownConfig",
    "StorageConfig",
    "TelemetryConfig",
    "TracesConfig",
]

# \Z, not $: "$" also matches before a trailing newline, which then fails at serve.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_HOSTPORT = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}\Z")
_MATCH = re.compile(r"(\*|/[A-Za-z0-9_.]+/(\*|[A-Za-z0-9_]+))\Z")
_EXACT_METHOD = re.compile(r"/[A-Za-z0-9_.]+/[A-Za-z0-9_]+\Z")
#: A model name as OIP servers take it (MLServer, Triton, KServe): no spaces, no ';'.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}\Z")
#: How a per-model route's match is written as one string: the route's name everywhere
#: (recorded rows, metrics, the admin API), e.g. /pkg.Svc/Method;model=fraud.
MODEL_SEPARATOR = ";model="


def _check_model(value: str) -> str:
    if not _MODEL.match(value):
        raise ValueError("must be 1-255 of letters, digits, '.', '_', ':', '/' or '-', "
                         f"starting with a letter or digit, got {value!r}")
    return value


def _route_match(value: object) -> object:
    """``{method: /pkg.Svc/Method, model: NAME}`` -> its one-string form; strings as given."""
    if not isinstance(value, dict):
        return value
    unknown = sorted(str(k) for k in value if k not in ("method", "model"))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (a match mapping has method and model)")
    method, model = value.get("method"), value.get("model")
    if not isinstance(method, str):
        raise ValueError("method: required, a string such as "
                         "/inference.GRPCInferenceService/ModelInfer")
    if model is None:
        return method
    if not isinstance(model, str):
        raise ValueError("model: must be a string")
    if not _EXACT_METHOD.match(method):
        raise ValueError(f"method: a per-model route needs one exact method, got {method!r}")
    return f"{method}{MODEL_SEPARATOR}{_check_model(model)}"


#: A host name in admin.allowed_hosts: a DNS name, optionally "*." for its subdomains.
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\Z")


_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*\Z", re.IGNORECASE)
_MEMORY_UNIT = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: Bounds of the sink's DuckDB memory limit: below the low one DuckDB cannot open a file.
_MEMORY_MIN, _MEMORY_MAX = 8 * 10**6, 16 * 2**40


def _check_memory(value: str) -> str:
    """A size DuckDB accepts as ``memory_limit`` (checked here, so serve never refuses it)."""
    found = _MEMORY.match(value)
    if found is None:
        raise ValueError(f"must be a size such as 64MB or 1GiB, got {value!r}")
    size = float(found.group(1)) * _MEMORY_UNIT[found.group(2).lower()]
    if not _MEMORY_MIN <= size <= _MEMORY_MAX:
        raise ValueError(f"must be between 8MB and 16TiB, got {value!r}")
    return value.strip()


def _check_hostport(value: str) -> str:
    if not _HOSTPORT.match(value):
        raise ValueError(f"must be host:port, got {value!r}")
    port = int(value.rsplit(":", 1)[1])
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Percent = Annotated[float, Field(ge=0, le=100)]
PositiveMs = Annotated[int, Field(gt=0, le=3_600_000)]
#: Where x-request-id, x-experiment and x-variant go back to the caller.
ReplyPlacement = Literal["trailers", "headers", "off"]


class AdminConfig(_Model):
    listen: str | None = Field("127.0.0.1:9901", description="admin HTTP address; null disables")
    tls: TlsServerConfig | None = Field(None, description="serve the admin API over HTTPS")
    token: SecretStr | None = Field(
        None, description="bearer token for mutations (or env SHADOWCAR_ADMIN_TOKEN)"
    )
    allowed_hosts: tuple[str, ...] = Field(
        (), description="DNS names the Host header may carry besides IP literals and localhost"
    )
    allow_unauthenticated: bool = Field(
        False, description="let an admin listener off loopback run without a token"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else _check_hostport(value)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _HOST_NAME.match(name):
                raise ValueError(f"{name!r} is not a host name (e.g. admin.example.internal)")
        return tuple(name.lower() for name in value)


class StorageConfig(_Model):
    path: str = Field("shadowcar.duckdb", description="DuckDB file the sink writes")
    flush_interval_ms: PositiveMs = Field(
        1000, description="longest time a record waits to be written (SIGKILL loses at most this)"
    )
    buffer_rows: int = Field(
        100_000, ge=100, le=10_000_000, description="records held before new ones are dropped"
    )
    batch_rows: int = Field(
        5_000, ge=1, le=1_000_000, description="pending records that trigger an early flush"
    )
    record_bytes: bool = Field(False, description="also store raw request and response bytes")
    max_payload_bytes: int = Field(
        16 * 1024, ge=1024, le=1024**3,
        description="bytes one message may take recorded (decoded or raw); a larger one is "
        "recorded as a summary (truncated)",
    )
    stream_max_messages: int = Field(
        10_000, ge=0, le=10_000_000,
        description="messages of one stream recorded one by one (stream_messages); the rest "
        "are counted, not kept (docs/streams.md)",
    )
    stream_max_bytes: int = Field(
        16 * 1024 * 1024, ge=0, le=1024**3,
        description="bytes of one stream's messages recorded one by one; the rest are counted",
    )
    probe_interval_ms: PositiveMs = Field(
        1000, description="how often a failing sink re-checks that it can write (readiness)"
    )
    duckdb_threads: int = Field(
        1, ge=1, le=64, description="DuckDB worker threads of the sink (keep the cores serving)"
    )
    duckdb_memory_limit: str = Field("64MB", description="DuckDB memory limit of the sink")
    export: ExportConfig = Field(
        default_factory=ExportConfig, description="fleet Parquet export (hive-partitioned)"
    )

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        return _check_memory(value)


class ShutdownConfig(_Model):
    grace_s: float = Field(10.0, ge=0, le=600, description="time in-flight calls get to finish")
    sink_timeout_s: float = Field(30.0, gt=0, le=600, description="time the final flush may take")
    drain_s: float = Field(
        2.0, ge=0, le=600, description="longest time new calls are held, then refused, at stop"
    )
    drain_quiet_ms: int = Field(
        50, ge=1, le=10_000, description="no new call for this long ends the hold early"
    )


class TracesConfig(_Model):
    exporter: Literal["none", "otlp", "console"] | None = Field(
        None, description="span exporter; unset: otlp when an OTLP endpoint is set, else none; "
        "env OTEL_TRACES_EXPORTER overrides"
    )
    endpoint: str | None = Field(
        None, description="OTLP/gRPC endpoint; env OTEL_EXPORTER_OTLP_ENDPOINT overrides"
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="parent-based ratio sampler; env OTEL_TRACES_SAMPLER overrides"
    )
    max_queue_size: int = Field(2048, ge=16, le=1_000_000, description="spans buffered for export")

    @field_serializer("endpoint", when_used="json")
    def _shown_endpoint(self, value: str | None) -> str | None:
        # Credentials in an endpoint (user:pass@, ?token=) never reach /v1/config or configs.
        if value is None or not ("@" in value or "?" in value):
            return value
        return mask_url(value)


class MetricsConfig(_Model):
    otlp: bool = Field(False, description="also push metrics over OTLP/gRPC")
    export_interval_s: float = Field(15.0, gt=0, le=3600, description="OTLP push interval")


class BackendErrorLogConfig(_Model):
    error_rate: float = Field(
        0.5, gt=0, le=1, description="log when a backend's recent error rate reaches this"
    )
    window: int = Field(100, ge=1, le=100_000, description="recent calls the rate looks at")
    min_calls: int = Field(10, ge=1, description="calls in the window before the rate counts")
    interval_s: float = Field(
        60.0, ge=0, le=86_400, description="at most one error-rate line per backend per interval"
    )


class TelemetryConfig(_Model):
    service_name: str = Field("shadowcar", description="service.name; env OTEL_SERVICE_NAME wins")
    traces: TracesConfig = Field(default_factory=TracesConfig, description="tracing")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="metrics")
    log_format: Literal["text", "json"] = Field("text", description="log lines: text or JSON")
    health_window: int = Field(
        1000, ge=10, le=1_000_000, description="pairs and latencies in the live rolling window"
    )
    backend_errors: BackendErrorLogConfig = Field(
        default_factory=BackendErrorLogConfig, description="when backend errors are logged"
    )


class RouteContractConfig(_Model):
    file: str = Field(description="contract YAML file (relative to the config file)")
    mode: Literal["observe", "enforce"] = Field(
        "observe", description="observe: record violations; enforce: refuse violating calls"
    )


class NotifyConfig(_Model):
    webhook: str | None = Field(None, description="URL that receives JSON events (POST)")
    timeout_s: float = Field(5.0, gt=0, le=120, description="one delivery attempt at most")
    retries: int = Field(3, ge=0, le=20, description="further attempts after the first")
    backoff_s: float = Field(0.5, ge=0, le=60, description="first wait between attempts")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="events waiting at most")

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_serializer("webhook", when_used="json")
    def _shown_webhook(self, value: str | None) -> str | None:
        # A webhook URL is a credential (user:pass@, a token in the path or the query): the
        # JSON form (GET /v1/config, the configs table, audit) shows scheme and host only.
        return None if value is None else mask_url(value)


class OutcomesConfig(_Model):
    max_events: int = Field(10_000, ge=1, le=1_000_000, description="events in one batch at most")
    recent_ids: int = Field(
        100_000, ge=0, le=10_000_000, description="event ids remembered to report duplicates"
    )
    max_future_s: float = Field(
        300, ge=0, le=10 * 365 * 86_400, description="how far ahead an event's ts may be"
    )


class BackendConfig(_Model):
    name: str = Field(description="unique backend name used by routes")
    version: str = Field(min_length=1, max_length=128, description="immutable model version")
    target: str = Field(description="host:port of the model's gRPC server")
    provenance: ModelProvenance | None = Field(
        None, description="where this model version came from (data, code, owner, evaluation)"
    )
    breaker: BreakerConfig = Field(
        default_factory=BreakerConfig, description="circuit breaker towards this backend"
    )
    tls: TlsClientConfig | None = Field(None, description="TLS (and mTLS) towards the backend")
    model: str | None = Field(
        None, description="OIP model name this backend is asked for (codec: oip routes only)"
    )
    model_version: str | None = Field(
        None, description="OIP model version sent to this backend (default: the caller's, "
        "none when model renames it)"
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else _check_model(value)

    @field_validator("model_version")
    @classmethod
    def _model_version(cls, value: str | None) -> str | None:
        if value is not None and not (0 < len(value) <= 128 and value.isprintable()):
            raise ValueError("must be 1-128 printable characters")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-63 of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        return _check_hostport(value)


class MirrorShadowConfig(_Model):
    backend: str = Field(description="name of the shadow backend")
    sample_percent: Percent = Field(100.0, description="share of requests mirrored, by request id")
    timeout_ms: PositiveMs = Field(1000, description="deadline of each shadow call")
    max_in_flight: int = Field(64, ge=1, le=100_000, description="cap on concurrent shadow calls")
    replica: bool = Field(False, description="same model as the primary: measures the noise floor")
    replica_of: str | None = Field(
        None, description="backend this replica copies (default: same version, else the primary)"
    )


class RouteConfig(_Model):
    match: str = Field(description="'/pkg.Svc/Method', '/pkg.Svc/*', '*' or "
                       "{method: /pkg.Svc/Method, model: NAME} (OIP: one model's calls)")
    primary: str = Field(description="name of the backend that serves")
    timeout_ms: PositiveMs = Field(1000, description="deadline of the serving call")
    codec: str = Field(
        "raw", description="how recorded bytes are decoded: oip | raw | reflection | "
        "descriptor:FILE (a FileDescriptorSet made by protoc --include_imports)"
    )
    compare_fields: tuple[str, ...] = Field(
        (), description="JSON field paths compared (reflection/descriptor codecs), e.g. a.b[].c"
    )
    ignore_fields: tuple[str, ...] = Field((), description="field paths field diffs ignore")
    streaming: Literal["unary", "server", "client", "bidi"] = Field(
        "unary", description="the matched methods' kind; streams pass through with flow control"
    )
    stream_key: str | None = Field(
        None, description="field path in each stream message that pairs messages in "
        "comparisons (default: their index in the stream)"
    )
    full_shadow_streams: bool = Field(
        False, description="read a shadow's stream to its end even when the caller's stream "
        "ends early (default: the shadow's stream is ended with it)"
    )
    compare_output: str | None = Field(None, description="output tensor compared (default first)")
    score_index: int = Field(-1, description="element of a vector output used as its score")
    shadows: tuple[MirrorShadowConfig, ...] = Field((), description="backends mirrored to")
    unit: UnitSource | tuple[UnitSource, ...] | None = Field(
        None, description="default unit key of this route's experiments and canary"
    )
    experiment: ExperimentConfig | None = Field(None, description="one A/B experiment")
    experiments: tuple[ExperimentConfig, ...] = Field((), description="several, in namespaces")
    canary: CanaryConfig | None = Field(None, description="gradual rollout with rollback")
    fallback: FallbackConfig | None = Field(None, description="answer when the backend fails")
    max_concurrent: int | None = Field(
        None, ge=1, le=1_000_000, description="calls in flight before RESOURCE_EXHAUSTED"
    )
    redact: RedactConfig | None = Field(None, description="what is hidden before recording")
    contract: RouteContractConfig | None = Field(None, description="data contract of the route")
    deadline_margin_ms: int = Field(
        5, ge=0, le=10_000, description="kept back from the caller's deadline for the answer"
    )
    reply_request_id: ReplyPlacement = Field(
        "trailers", description="where x-request-id, x-experiment, x-variant reach the caller: "
        "trailers | headers (initial metadata) | off"
    )

    @property
    def all_experiments(self) -> tuple[ExperimentConfig, ...]:
        return ((self.experiment,) if self.experiment else ()) + self.experiments

    @property
    def method(self) -> str:
        """The method pattern matched (``match`` without its model)."""
        return self.match.partition(MODEL_SEPARATOR)[0]

    @property
    def model(self) -> str | None:
        """The OIP model whose calls this route takes, or None (every model's)."""
        _, sep, model = self.match.partition(MODEL_SEPARATOR)
        return model if sep else None

    @field_validator("match", mode="before")
    @classmethod
    def _match_form(cls, value: object) -> object:
        return _route_match(value)

    @field_validator("match")
    @classmethod
    def _match(cls, value: str) -> str:
        method, sep, model = value.partition(MODEL_SEPARATOR)
        if not _MATCH.match(method):
            raise ValueError("must be '/pkg.Service/Method', '/pkg.Service/*', '*' or "
                             "{method: /pkg.Service/Method, model: NAME}")
        if sep:
            if not _EXACT_METHOD.match(method):
                raise ValueError("a per-model route needs one exact method")
            _check_model(model)
        return value

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        if value in ("oip", "raw", "reflection") or (
            value.startswith("descriptor:") and len(value) > len("descriptor:")
        ):
            return value
        raise ValueError("must be oip, raw, reflection or descriptor:FILE")

    @field_validator("stream_key")
    @classmethod
    def _stream_key(cls, value: str | None) -> str | None:
        from sidecar.codecs.fieldpath import parse_path

        if value is not None:
            parse_path(value)  # CodecError is a ValueError: reported with the field
        return value

    @field_validator("compare_fields", "ignore_fields")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from sidecar.codecs.fieldpath import parse_path

        for path in value:
            parse_path(path)  # CodecError is a ValueError: reported with the field
        return value


class Config(_Model):
    listen: str = Field("0.0.0.0:50051", description="gRPC address callers use")
    tls: TlsServerConfig | None = Field(None, description="TLS (mTLS with client_ca) for callers")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="admin HTTP API")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="recording")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig, description="stop behaviour")
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="traces, metrics, logs"
    )
    triggers: tuple[TriggerConfig, ...] = Field((), description="retraining trigger rules")
    triggers_every_s: float = Field(
        300, gt=0, le=86_400, description="how often the sidecar evaluates its triggers"
    )
    notify: NotifyConfig = Field(default_factory=lambda: NotifyConfig(), description="webhooks")
    outcomes: OutcomesConfig = Field(
        default_factory=OutcomesConfig, description="outcome feedback ingestion"
    )
    assignment: AssignmentConfig = Field(
        default_factory=AssignmentConfig, description="holdout shared by all experiments"
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=1 << 30, description="largest message received or sent"
    )
    backends: tuple[BackendConfig, ...] = Field(min_length=1, description="model endpoints")
    routes: tuple[RouteConfig, ...] = Field(min_length=1, description="what happens per method")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_hostport(value)
