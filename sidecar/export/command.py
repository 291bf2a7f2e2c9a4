"""``sidecar export``: a recorded DuckDB file written out as the fleet's Parquet layout.

A running sidecar exports by itself (``storage.export``); this command does the same for a
file no sidecar writes any more, so that a stopped replica's rows, a copied file or the
demo's recording can join a fleet directory and be read by ``--engine spark``. It keeps
the exporter's watermark in the file like a sidecar does: running it again writes only
rows not exported before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["add_export_parser"]


def add_export_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="write a recorded DuckDB file as the fleet's Parquet layout",
        description="Export the rows of a sidecar's DuckDB file (one no sidecar is writing) "
        "as hive-partitioned Parquet segments (docs/fleet-data.md); rows already exported "
        "from this file are skipped. A running sidecar exports by itself: set "
        "storage.export.dir in its config.")
    export.add_argument("--db", required=True, help="the recorded DuckDB file")
    export.add_argument("--dir", required=True, help="the fleet directory to write into")
    export.add_argument("--replica", default=None,
                        help="this file's replica name in file names (default: host + hash "
                        "of the file's path, as the sidecar names it)")
    export.add_argument("--include-bytes", action="store_true",
                        help="also export the raw request and response bytes")
    export.add_argument("--json", action="store_true", help="print what was written as JSON")
    export.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import duckdb

    from sidecar.exit_codes import EXIT_DATA, EXIT_USAGE, CommandError
    from sidecar.export import ExportConfig, SegmentExporter

    if not os.path.isfile(args.db):
        raise CommandError(f"--db {args.db}: no such file", EXIT_DATA)
    try:
        settings = ExportConfig(dir=args.dir, replica=args.replica,
                                include_bytes=args.include_bytes)
    except ValueError as exc:
        raise CommandError(f"export settings: {exc}", EXIT_USAGE) from exc
    try:
        probe = duckdb.connect(args.db)  # the watermark is kept in the file: read-write
    except duckdb.IOException as exc:
        raise CommandError(
            f"--db {args.db} cannot be opened for writing ({exc}); a running sidecar exports "
            "by itself: set storage.export.dir in its config", EXIT_DATA) from exc
    except duckdb.Error as exc:
        raise CommandError(f"--db {args.db} is not a readable DuckDB file: {exc}",
                           EXIT_DATA) from exc
    probe.close()
    exporter = SegmentExporter(settings, lambda: duckdb.connect(args.db), args.db)
    try:
        result = exporter.export_once()
    except (duckdb.Error, OSError) as exc:
        raise CommandError(f"export of {args.db} to {args.dir} failed: {exc}",
                           EXIT_DATA) from exc
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    elif result.rows:
        tables = ", ".join(f"{t.table} {t.rows}" for t in result.tables if t.rows)
        print(f"exported {result.rows} rows ({tables}) in {len(result.files)} files to "
              f"{args.dir}")
    else:
        print(f"nothing new to export from {args.db}", file=sys.stderr)
    return 0
