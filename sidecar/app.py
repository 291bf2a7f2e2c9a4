"""The composition root: builds the sidecar from a config and shuts it down in order.

Start: telemetry -> sink -> backends -> dispatch -> gRPC server (+ health, reflection) ->
admin. Stop, each step with a deadline: health NOT_SERVING -> stop accepting and drain
in-flight calls -> let shadows end -> close channels -> flush the sink -> close exporters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace.export import SpanExporter

from sidecar.admin import AdminServer
from sidecar.backends import Backend
from sidecar.config import LoadedConfig, canonical_json
from sidecar.errors import ShadowcarError
from sidecar.mirror import Mirror
from sidecar.routing import RoutePlan, RouteTable
from sidecar.server import Dispatch, ProxyHandler
from sidecar.server.forwarding import CallCounts
from sidecar.sink import CallRecord, DuckDBSink
from sidecar.telemetry import Metrics, ModelHealth, Tracing
from sidecar.telemetry.tracing import host_port

__all__ = ["Sidecar"]

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME  # grpc.health.v1.Health


class Sidecar:
    """One running sidecar; an async context manager with an idempotent ``aclose``."""

    def __init__(self, loaded: LoadedConfig, *, span_exporter: SpanExporter | None = None) -> None:
        self.loaded = loaded
        cfg = loaded.config
        self.call_counts: CallCounts = {}
        self.health = ModelHealth(cfg.telemetry.health_window)
        self.tracing = Tracing(cfg.telemetry, exporter=span_exporter)
        self.metrics = Metrics(cfg.telemetry, self)
        self.sink = DuckDBSink(cfg.storage, on_call=self._observe_call)
        self.sink.on_flush = self.metrics.flush_duration.record
        self.mirror = Mirror(self.sink.record_call, counts=self.call_counts, tracing=self.tracing)
        self.backends: dict[str, Backend] = {}
        self.health_servicer = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._handler: ProxyHandler | None = None
        self._readiness: asyncio.Task[None] | None = None
        self.admin: AdminServer | None = None
        self.port: int = 0
        self.draining = False
        self.primaries_ready = False
        self._stopped = asyncio.Event()
        self._closed = False

    @property
    def dispatch(self) -> Dispatch:
        assert self._handler is not None, "sidecar not started"
        return self._handler.dispatch

    def route_plans(self) -> list[RoutePlan]:
        return list(self._handler.dispatch.routes.plans) if self._handler is not None else []

    def _observe_call(self, row: CallRecord, score: float | None, label: str | None) -> None:
        """Writer thread: feeds latency histograms and the live model-health windows."""
        if row.latency_ms is not None:
            self.metrics.observe_call(row.route, row.backend, row.role, row.latency_ms)
        self.health.observe(
            row.request_id, row.route, row.backend, row.role, row.status, row.latency_ms,
            score, label,
        )

    async def start(self) -> None:
        cfg = self.loaded.config
        self.sink.open()
        self.sink.record_config(self.loaded.version, canonical_json(cfg))
        for backend in cfg.backends:
            self.backends[backend.name] = Backend(backend, max_message_bytes=cfg.max_message_bytes)
        routes = RouteTable(cfg, self.backends)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        # The sidecar's own services come first, so a '*' route never shadows them.
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, self._server)
        reflection.enable_server_reflection(
            (HEALTH_SERVICE, reflection.SERVICE_NAME), self._server
        )
        try:
            self.port = self._server.add_insecure_port(cfg.listen)
        except RuntimeError as exc:
            raise ShadowcarError(f"listen: cannot bind {cfg.listen}: {exc}") from exc
        if self.port == 0:
            raise ShadowcarError(f"listen: cannot bind {cfg.listen}")
        host, _ = host_port(cfg.listen)
        dispatch = Dispatch(
            routes, self.loaded.version, self.sink, self.mirror,
            counts=self.call_counts, tracing=self.tracing, listen=(host, self.port),
        )
        self._handler = ProxyHandler(dispatch)
        self._server.add_generic_rpc_handlers([self._handler])
        await self.health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        self._readiness = asyncio.get_running_loop().create_task(self._watch_primaries())
        if cfg.admin.listen is not None:
            self.admin = AdminServer(self, cfg.admin.listen)
            await self.admin.start()
        log.info(
            "shadowcar serving on port %d (config %s, recording to %s, traces: %s)",
            self.port, self.loaded.version, cfg.storage.path, self.tracing.export_target,
        )

    async def _watch_primaries(self) -> None:
        """SERVING once every route's primary is reachable (re-checked until it is)."""
        primaries = {plan.primary.name: plan.primary for plan in self.route_plans()}
        while not self.draining:
            ready = [await b.wait_ready(timeout=1.0) for b in primaries.values()]
            if all(ready):
                self.primaries_ready = True
                await self.health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
                return

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def request_stop(self) -> None:
        self._stopped.set()

    async def run_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`request_stop`), then shut down."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stopped.wait()
            log.info("stop requested; draining")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.aclose()

    async def aclose(self) -> None:
        """Ordered shutdown, each step with its deadline. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.draining = True
        cfg = self.loaded.config
        if self._readiness is not None:
            self._readiness.cancel()
            await asyncio.gather(self._readiness, return_exceptions=True)
        if self._server is not None:
            await self.health_servicer.enter_graceful_shutdown()
            # Stops accepting at once; in-flight calls get the grace period.
            await self._server.stop(cfg.shutdown.grace_s)
        shadow_deadline = max(
            (s.timeout_ms / 1000 for r in cfg.routes for s in r.shadows), default=0.0
        )
        await self.mirror.aclose(timeout=shadow_deadline + 0.5)
        for backend in self.backends.values():
            await backend.aclose()
        if self.admin is not None:
            await self.admin.aclose()
        await self.sink.aclose(timeout=cfg.shutdown.sink_timeout_s)
        await asyncio.to_thread(self.tracing.shutdown)
        await asyncio.to_thread(self.metrics.shutdown)
        stats = self.sink.stats
        log.info(
            "shutdown complete: %s requests and %s calls written, %s dropped",
            stats.written["requests"], stats.written["calls"], sum(stats.dropped.values()),
        )

    def stats(self) -> dict[str, Any]:
        """Live counters and model health for the admin API, dashboard and demo."""
        routes = []
        for plan in self.route_plans():
            routes.append(
                {
                    "match": plan.match,
                    "primary": plan.primary.name,
                    "primary_version": plan.primary.version,
                    "requests": plan.requests,
                    "errors": dict(plan.errors),
                    "shadows": {
                        lane.backend.name: {
                            **lane.counters(),
                            "sample_percent": lane.config.sample_percent,
                            "version": lane.backend.version,
                            "replica": lane.config.replica,
                        }
                        for lane in plan.shadows
                    },
                    "canary": None,
                    "experiment": None,
                }
            )
        return {
            "config_version": self.loaded.version,
            "draining": self.draining,
            "primaries_ready": self.primaries_ready,
            "routes": routes,
            "latency": self.health.latencies(),
            "pairs": self.health.pairs(),
            "mirror_in_flight": self.mirror.in_flight,
            "sink": {**self.sink.stats.as_dict(), "queue_depth": self.sink.queue_depth},
        }
