"""The records the hot path hands to the sink: plain named tuples, cheap to build.

Decoding of the bytes they carry happens later, in the writer thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from sidecar.codecs import Codec
    from sidecar.sink.redaction import Redactor

__all__ = [
    "AuditRecord",
    "CallRecord",
    "CanaryStateRecord",
    "ConfigRecord",
    "Decoding",
    "OutcomeRecord",
    "RequestRecord",
]


class Decoding(NamedTuple):
    """How a route's bytes are decoded when written (shared by all its records)."""

    codec: Codec | None
    compare_output: str | None
    score_index: int
    record_bytes: bool
    redactor: Redactor | None = None
    contract: Any = None
    compare_fields: tuple[str, ...] = ()
    #: Nothing to decode, check, redact or keep: the writer builds its columns in bulk.
    plain: bool = False


class RequestRecord(NamedTuple):
    request_id: str
    ts: float
    route: str
    method: str
    unit_id: str | None
    experiment: str | None
    variant: str | None
    exposed: bool
    config_version: str
    trace_id: str | None
    span_id: str | None
    status: str
    latency_ms: float
    request: bytes
    decoding: Decoding
    #: Set by enforce mode on the hot path (violations, imputed fields); observe mode fills
    #: violations in the writer.
    violations: tuple[Any, ...] | None = None
    imputed: tuple[str, ...] | None = None
    #: A client or bidi stream: the caller's messages seen (docs/streams.md).
    messages: int | None = None


class CallRecord(NamedTuple):
    request_id: str
    ts: float
    route: str
    method: str
    backend: str
    backend_version: str
    role: str
    served: bool
    status: str
    latency_ms: float | None
    request_size: int
    response: bytes | None
    error: str | None
    config_version: str
    decoding: Decoding
    messages: int | None = None
    first_message_ms: float | None = None


class ConfigRecord(NamedTuple):
    config_version: str
    ts: float
    config_json: str


class OutcomeRecord(NamedTuple):
    """A later observed result for a unit or a request (ingested, validated)."""

    event_id: str
    unit_id: str | None
    request_id: str | None
    metric: str
    value: float
    ts: float
    received_at: float


class CanaryStateRecord(NamedTuple):
    ts: float
    route: str
    canary_key: str
    state: str
    step_index: int
    step_started: float
    last_decision: str | None
    config_version: str


class AuditRecord(NamedTuple):
    ts: float
    actor: str
    action: str
    route: str | None
    reason: str | None
    config_version: str
    detail: str | None
