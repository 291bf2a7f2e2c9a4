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


def _no_md() -> None:
    """No metadata to the backend and none added to the answer (no request id either way):
    what the contract's metadata costs per call (the bare proxy sends none)."""
    import sidecar.server.forwarding as fwd
    import sidecar.server.handler as handler

    fwd.forward_metadata = lambda incoming, carrier=None: ((), fwd.new_request_id())
    handler.request_id_metadata = lambda call: ()


def _no_reply_md() -> None:
    """The backend's initial and trailing metadata are not read (measurement only)."""
    import time

    import grpc

    from sidecar.backends import CallOutcome
    from sidecar.backends.channel import Backend

    async def call(self: Any, method: str, request: bytes, *, timeout: float,
                   metadata: Any, **_: Any) -> Any:
        started = time.time()
        t0 = time.perf_counter()
        try:
            response = await self._method(method)(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return CallOutcome(exc.code(), exc.details(), None, (), (), started,
                               (time.perf_counter() - t0) * 1000)
        return CallOutcome(grpc.StatusCode.OK, None, response, (), (), started,
                           (time.perf_counter() - t0) * 1000)

    Backend.call = call  # type: ignore[method-assign]


def _urandom_ids() -> None:
    """Request ids from ``os.urandom`` per call, as before issue 18's last step (its
    syscall lets go of the GIL on every call)."""
    import os

    import sidecar.server.forwarding as fwd

    fwd.new_request_id = lambda: os.urandom(16).hex()


def _no_freeze() -> None:
    """Startup objects left in the collector's generations, as before issue 18's last
    step (``sidecar serve`` freezes them once serving)."""
    import gc

    gc.freeze = lambda: None


def _sdk_histogram() -> None:
    """Call latencies recorded through the OpenTelemetry SDK's histogram per call row, as
    before issue 18's last step (telemetry/latency.py counts them outside the SDK)."""
    from sidecar.telemetry.metrics import Metrics

    init, observe = Metrics.__init__, Metrics.observe_call

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._sdk_latency = self.provider.get_meter("shadowcar").create_histogram(
            "shadowcar.call.latency_sdk_ms", unit="ms")
        self._sdk_attrs = {}

    def observe_call(self: Any, route: str, backend: str, role: str, latency: float) -> None:
        key = (route, backend, role)
        attrs = self._sdk_attrs.get(key)
        if attrs is None:
            attrs = self._sdk_attrs[key] = {"route": route, "backend": backend, "role": role}
        self._sdk_latency.record(latency, attrs)
        observe(self, route, backend, role, latency)

    Metrics.__init__ = __init__  # type: ignore[method-assign]
    Metrics.observe_call = observe_call  # type: ignore[method-assign]


def _no_gc() -> None:
    """The cyclic garbage collector off (measurement only): its share of the hot path."""
    import gc

    gc.disable()


def _switch(ms: float) -> Callable[[], None]:
    """The interpreter's GIL switch interval (default 5 ms): how long the event loop may wait
    for the GIL while the recorder's thread holds it."""
    return lambda: sys.setswitchinterval(ms / 1000)


VARIANTS = {
    "no-record": _no_record,
    "no-insert": _no_insert,
    "no-observe": _no_observe,
    "no-timeout": _no_timeout,
    "no-md": _no_md,
    "no-gc": _no_gc,
    "urandom-ids": _urandom_ids,
    "no-freeze": _no_freeze,
    "sdk-histogram": _sdk_histogram,
    "no-reply-md": _no_reply_md,
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
