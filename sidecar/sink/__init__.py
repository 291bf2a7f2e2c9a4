"""Recording: records from the hot path, a bounded buffer, and the DuckDB writer thread."""

from sidecar.sink.duckdb_sink import DuckDBSink, SinkStats
from sidecar.sink.records import (
    AuditRecord,
    CallRecord,
    CanaryStateRecord,
    ConfigRecord,
    Decoding,
    OutcomeRecord,
    RequestRecord,
)
from sidecar.sink.schema import SCHEMA_VERSION, migrate

__all__ = [
    "SCHEMA_VERSION",
    "AuditRecord",
    "CallRecord",
    "CanaryStateRecord",
    "ConfigRecord",
    "Decoding",
    "DuckDBSink",
    "OutcomeRecord",
    "RequestRecord",
    "SinkStats",
    "migrate",
]
