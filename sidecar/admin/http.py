"""The admin HTTP API (aiohttp): health, readiness, config and live stats.

Bound to loopback by default; the transport only translates, the sidecar holds the state.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.telemetry import prometheus

if TYPE_CHECKING:
    from sidecar.app import Sidecar

__all__ = ["AdminServer"]

log = logging.getLogger(__name__)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=1))


class AdminServer:
    """Serves the admin API for one sidecar; async context manager, idempotent aclose."""

    def __init__(self, sidecar: Sidecar, listen: str) -> None:
        self._sidecar = sidecar
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self.port = 0
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/config", self._config)
        app.router.add_get("/v1/stats", self._stats)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._dashboard)
        self._runner = web.AppRunner(app, access_log=None)
        self._closed = False

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp exposes the bound socket only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        sc = self._sidecar
        reasons = []
        if sc.draining:
            reasons.append("draining")
        if not sc.sink.writable:
            reasons.append(f"sink not writable: {sc.sink.stats.last_error or 'writer stopped'}")
        if not sc.primaries_ready:
            reasons.append("primary backend not reachable yet")
        if reasons:
            return _json({"status": "not ready", "reasons": reasons}, status=503)
        return _json({"status": "ready", "config_version": sc.loaded.version})

    async def _config(self, request: web.Request) -> web.Response:
        sc = self._sidecar
        data = sc.loaded.config.model_dump(mode="json")  # SecretStr dumps as '**********'
        return _json({"version": sc.loaded.version, "config": data})

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self._sidecar.stats())

    async def _metrics(self, request: web.Request) -> web.Response:
        text = self._sidecar.metrics.render()
        return web.Response(text=text, headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def _dashboard(self, request: web.Request) -> web.Response:
        page = resources.files("sidecar.admin").joinpath("static/dashboard.html").read_text()
        return web.Response(text=page, content_type="text/html")
