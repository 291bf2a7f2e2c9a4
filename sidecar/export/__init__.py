"""Fleet data: recorded tables exported as hive-partitioned Parquet, idempotently."""

from sidecar.export.exporter import (
    BYTES_COLUMNS,
    EXPORTED_TABLES,
    CursorFactory,
    ExportResult,
    SegmentExporter,
    TableExport,
)
from sidecar.export.periodic import PeriodicExport, sink_cursor_factory
from sidecar.export.settings import ExportConfig, default_replica

__all__ = [
    "BYTES_COLUMNS",
    "EXPORTED_TABLES",
    "CursorFactory",
    "ExportConfig",
    "ExportResult",
    "PeriodicExport",
    "SegmentExporter",
    "TableExport",
    "default_replica",
    "sink_cursor_factory",
]
