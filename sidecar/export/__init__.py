"""Fleet data: recorded tables exported as hive-partitioned Parquet, idempotently.

Names are imported on first use: the config model needs only :class:`ExportConfig`, and a
sidecar that exports nothing never loads pyarrow.compute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar._lazy import lazy_exports

if TYPE_CHECKING:
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

_EXPORTER = "sidecar.export.exporter"
__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "BYTES_COLUMNS": _EXPORTER,
        "EXPORTED_TABLES": _EXPORTER,
        "CursorFactory": _EXPORTER,
        "ExportResult": _EXPORTER,
        "SegmentExporter": _EXPORTER,
        "TableExport": _EXPORTER,
        "PeriodicExport": "sidecar.export.periodic",
        "sink_cursor_factory": "sidecar.export.periodic",
        "ExportConfig": "sidecar.export.settings",
        "default_replica": "sidecar.export.settings",
    },
)
