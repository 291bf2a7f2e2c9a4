"""``sidecar serve`` with hot-path experiments patched in at start, to measure them.

Bench only: nothing under sidecar/ changes; a variant that pays off becomes a real change.
    .venv/bin/python bench/sidecar_variant.py --variant no-record,no-insert serve --config F

(``trailing-id`` is gone: the request id rides in the trailers by default since issue 18.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sidecar import cli
from sidecar.sink import DuckDBSink


def _no_record() -> None:
    """Recording off: measures what the sink costs the hot path (and its writer thread)."""
    DuckDBSink.record_request = lambda self, row: None  # type: ignore[method-assign]
    DuckDBSink.record_call = lambda self, row: None  # type: ignore[method-assign]


def _no_insert() -> None:
    """The writer builds every Arrow batch but skips DuckDB's INSERT (measurement only)."""
    import sidecar.sink.duckdb_sink as sink_mod

    def skip_insert(con: Any, table: str, batch: Any) -> int:
        return int(batch.num_rows)

    sink_mod.insert_batch = skip_insert


def _no_observe() -> None:
    """No per-call latency histogram or model-health update in the writer (measurement)."""
    from sidecar.telemetry.observer import CallObserver

    CallObserver.__call__ = lambda self, row, score, label: None  # type: ignore[method-assign]


def _no_timeout() -> None:
    """No deadline on the backend call when the caller sent none (the bare proxy's way; the
    product always applies the route's timeout_ms): what the deadline costs per call."""
    from sidecar.server.forwarding import Dispatch

    decide = Dispatch._decide

    def _decide(self: Any, call: Any) -> None:
        decide(self, call)
        if call.time_remaining is None:
            call.timeout = None

    Dispatch._decide = _decide  # type: ignore[method-assign]


def _switch(ms: float) -> Callable[[], None]:
    """The interpreter's GIL switch interval (default 5 ms): how long the event loop may wait
    for the GIL while the recorder's thread holds it."""
    return lambda: sys.setswitchinterval(ms / 1000)


VARIANTS = {
    "no-record": _no_record,
    "no-insert": _no_insert,
    "no-observe": _no_observe,
    "no-timeout": _no_timeout,
    "switch-1ms": _switch(1.0),
    "switch-0.5ms": _switch(0.5),
    "switch-0.2ms": _switch(0.2),
}


def main() -> int:
    argv = sys.argv[1:]
    if len(argv) >= 2 and argv[0] == "--variant":
        for name in filter(None, argv[1].split(",")):
            VARIANTS[name]()
        argv = argv[2:]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
