"""The composition root: builds the sidecar from a config and shuts it down in order.

Start: sink -> backends -> dispatch -> gRPC server -> admin. Stop (with deadlines): stop
accepting and drain in-flight calls -> let shadows end -> close channels -> flush the sink.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc

from sidecar.admin import AdminServer
from sidecar.backends import Backend
from sidecar.config import LoadedConfig, canonical_json
from sidecar.errors import ShadowcarError
from sidecar.mirror import Mirror
from sidecar.routing import RouteTable
from sidecar.server import Dispatch, ProxyHandler
from sidecar.sink import DuckDBSink

__all__ = ["Sidecar"]

log = logging.getLogger(__name__)


class Sidecar:
    """One running sidecar; an async context manager with an idempotent ``aclose``."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        cfg = loaded.config
        self.sink = DuckDBSink(cfg.storage)
        self.mirror = Mirror(self.sink.record_call)
        self.backends: dict[str, Backend] = {}
        self._server: grpc.aio.Server | None = None
        self._handler: ProxyHandler | None = None
        self.admin: AdminServer | None = None
        self.port: int = 0
        self.draining = False
        self._stopped = asyncio.Event()
        self._closed = False

    @property
    def dispatch(self) -> Dispatch:
        assert self._handler is not None, "sidecar not started"
        return self._handler.dispatch

    async def start(self) -> None:
        cfg = self.loaded.config
        self.sink.open()
        self.sink.record_config(self.loaded.version, canonical_json(cfg))
        for backend in cfg.backends:
            self.backends[backend.name] = Backend(backend, max_message_bytes=cfg.max_message_bytes)
        routes = RouteTable(cfg, self.backends)
        self._handler = ProxyHandler(Dispatch(routes, self.loaded.version, self.sink, self.mirror))
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._server.add_generic_rpc_handlers([self._handler])
        try:
            self.port = self._server.add_insecure_port(cfg.listen)
        except RuntimeError as exc:
            raise ShadowcarError(f"listen: cannot bind {cfg.listen}: {exc}") from exc
        if self.port == 0:
            raise ShadowcarError(f"listen: cannot bind {cfg.listen}")
        await self._server.start()
        if cfg.admin.listen is not None:
            self.admin = AdminServer(self, cfg.admin.listen)
            await self.admin.start()
        log.info(
            "shadowcar serving on port %d (config %s, recording to %s)",
            self.port, self.loaded.version, cfg.storage.path,
        )

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
        if self._server is not None:
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
        stats = self.sink.stats
        log.info(
            "shutdown complete: %s requests and %s calls written, %s dropped",
            stats.written["requests"], stats.written["calls"], sum(stats.dropped.values()),
        )

    def stats(self) -> dict[str, Any]:
        """Live counters for the admin API and the demo."""
        routes = []
        if self._handler is not None:
            for plan in self._handler.dispatch.routes.plans:
                routes.append(
                    {
                        "match": plan.match,
                        "primary": plan.primary.name,
                        "requests": plan.requests,
                        "errors": dict(plan.errors),
                        "shadows": {
                            lane.backend.name: lane.counters() for lane in plan.shadows
                        },
                    }
                )
        return {
            "config_version": self.loaded.version,
            "draining": self.draining,
            "routes": routes,
            "mirror_in_flight": self.mirror.in_flight,
            "sink": {**self.sink.stats.as_dict(), "queue_depth": self.sink.queue_depth},
        }
