"""The admin HTTP API (aiohttp): health, metrics, config, control, outcomes, dashboard.

Bound to loopback by default. When a token is configured (config ``admin.token`` or env
``SHADOWCAR_ADMIN_TOKEN``) every POST needs ``Authorization: Bearer TOKEN`` (401 without);
Host, Origin and body type are checked for every request (``sidecar.admin.guard``).
Handlers only translate; the sidecar holds the state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.admin.guard import SAFETY_HEADERS, AdminGuard
from sidecar.canary.controller import ACTIONS as CANARY_ACTIONS
from sidecar.config.load import parse_config_text
from sidecar.errors import ConfigError
from sidecar.telemetry import prometheus
from sidecar.telemetry.tracing import host_port

if TYPE_CHECKING:
    from sidecar.telemetry.live_state import LiveState

__all__ = ["AdminServer"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, dumps=lambda d: json.dumps(d, indent=1, default=str)
    )


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return _json({"error": reason, **extra}, status=status)


async def _safety_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SAFETY_HEADERS)


class AdminServer:
    """Serves the admin API for one sidecar; async context manager, idempotent aclose."""

    def __init__(self, sidecar: LiveState, listen: str) -> None:
        self._sidecar = sidecar
        self._host, self._port = host_port(listen)
        self.port = 0
        app = web.Application(middlewares=[self._auth], client_max_size=8 * 1024 * 1024)
        r = app.router
        r.add_get("/", self._dashboard)
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/metrics", self._metrics)
        r.add_get("/v1/stats", self._stats)
        r.add_get("/v1/config", self._config)
        r.add_post("/v1/config", self._reload)
        r.add_get("/v1/experiments", self._experiments)
        r.add_get("/v1/canaries", self._canaries)
        r.add_post("/v1/canaries/{route:.+}/{action}", self._canary_action)
        r.add_post("/v1/outcomes", self._outcomes)
        r.add_get("/v1/audit", self._audit)
        from sidecar.admin.reports import LiveReports

        self._reports = LiveReports(sidecar)  # /v1/reports/{kind}, /v1/models, /v1/check
        self._reports.add_routes(r)
        self._guard = AdminGuard(self._host, sidecar.loaded.config.admin.allowed_hosts,
                                 lambda: self._sidecar.loaded.admin_token)
        app.on_response_prepare.append(_safety_headers)
        self._runner = web.AppRunner(app, access_log=None)
        self._closed = False

    async def start(self) -> None:
        await self._runner.setup()
        import os

        from sidecar.backends.tls import admin_ssl_context

        base = os.path.dirname(os.path.abspath(self._sidecar.config_path or "."))
        ctx = admin_ssl_context(self._sidecar.loaded, base if self._sidecar.config_path
                                else os.getcwd())
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=ctx)
        await site.start()
        server = site._server  # aiohttp exposes the bound socket only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        self._reports.listening(self._host, self.port, tls=ctx is not None)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reports.aclose()
        await self._runner.cleanup()

    # -- auth --------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Host (DNS rebinding), Origin/Sec-Fetch-Site, token and body type: sidecar.admin.guard
        headers = {k.lower(): v for k, v in request.headers.items()}
        refusal = self._guard.check(request.method, request.path, headers, request.body_exists,
                                    request.content_type if request.body_exists else "")
        if refusal is not None:
            extra = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else {}
            response = _error(refusal.status, refusal.reason)
            response.headers.update(extra)
            return response
        return await handler(request)

    # -- reads -------------------------------------------------------------------------
    async def _dashboard(self, request: web.Request) -> web.Response:
        page = resources.files("sidecar.admin").joinpath("static/dashboard.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        sc = self._sidecar
        reasons = []
        if sc.draining:
            reasons.append("draining")
        sink_problem = sc.sink.problem  # re-checked by the sink's own probe, traffic or not
        if sink_problem is not None:
            reasons.append(sink_problem)
        if not sc.primaries_ready:
            reasons.append("primary backend not reachable yet")
        if reasons:
            return _json({"status": "not ready", "reasons": reasons}, status=503)
        return _json({"status": "ready", "config_version": sc.loaded.version})

    def _other_workers(self, request: web.Request) -> list[int]:
        """Admin ports of the other workers, when this one speaks for them (worker 0)."""
        sc = self._sidecar
        if sc.workers <= 1 or sc.worker_index != 0 or request.query.get("local"):
            return []
        return [self.port + i for i in range(1, sc.workers)]

    async def _metrics(self, request: web.Request) -> web.Response:
        from sidecar.admin.fleet import fetch_workers, merge_metrics

        text = self._sidecar.metrics.render()
        others = self._other_workers(request)
        if others:
            text = merge_metrics([text, *await fetch_workers(others, "/metrics?local=1")])
        return web.Response(text=text, headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def _stats(self, request: web.Request) -> web.Response:
        from sidecar.admin.fleet import fetch_workers, merge_stats

        stats = self._sidecar.stats()
        others = self._other_workers(request)
        if others:
            stats = merge_stats(stats, await fetch_workers(others, "/v1/stats?local=1"))
        return _json(stats)

    async def _config(self, request: web.Request) -> web.Response:
        sc = self._sidecar
        data = sc.loaded.config.model_dump(mode="json")  # SecretStr dumps as '**********'
        # "file": what SIGHUP (or a reload without a body) rereads: the last file loaded.
        return _json({"version": sc.loaded.version, "file": sc.config_path, "config": data})

    async def _experiments(self, request: web.Request) -> web.Response:
        return _json({"experiments": self._sidecar.experiments()})

    async def _canaries(self, request: web.Request) -> web.Response:
        return _json({"canaries": [c.status() for c in self._sidecar.canaries.values()]})

    async def _audit(self, request: web.Request) -> web.Response:
        try:
            limit = min(int(request.query.get("limit", "100")), 10_000)
        except ValueError:
            return _error(400, "limit: must be an integer")
        if limit < 1:
            return _error(400, "limit: must be at least 1")
        rows = await asyncio.to_thread(self._sidecar.read_audit, limit)
        return _json({"audit": rows})

    # -- mutations ----------------------------------------------------------------------
    async def _body_json(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc.msg} at position {exc.pos}")
        except UnicodeDecodeError:
            return _error(400, "body is not valid JSON: not UTF-8 text")
        except RecursionError:
            return _error(400, "body is not valid JSON: nested too deeply")
        if not isinstance(data, dict):
            return _error(400, "body must be a JSON object")
        return data

    async def _canary_action(self, request: web.Request) -> web.Response:
        route = request.match_info["route"]
        action = request.match_info["action"]
        if action not in CANARY_ACTIONS:
            return _error(404, f"unknown action {action!r} (one of {', '.join(CANARY_ACTIONS)})")
        if self._sidecar.canary.get(route) is None:
            return _error(404, f"no canary on route {route!r}")
        body = await self._body_json(request)
        if isinstance(body, web.Response):
            return body
        reason = str(body.get("reason") or "").strip()
        actor = str(body.get("actor") or request.remote or "admin")
        force = body.get("force", False)
        if not isinstance(force, bool):
            return _error(400, "force: must be true or false")
        if force and action != "promote":
            return _error(400, "force: only a promote can be forced")
        if (force or action == "restart") and not reason:
            what = "a forced promote" if force else "a restart"
            return _error(400, f"reason: {what} needs a reason (it is audited)")
        try:
            status = await self._sidecar.canary.act(
                route, action, actor, reason, force=force
            )
        except KeyError:  # removed by a reload meanwhile
            return _error(404, f"no canary on route {route!r}")
        except ValueError as exc:
            return _error(409, str(exc))
        return _json(status)

    async def _reload(self, request: web.Request) -> web.Response:
        sc = self._sidecar
        raw = await request.read()
        body_reason = request.query.get("reason", "")
        actor = request.query.get("actor") or request.remote or "admin"
        # ``file``: the body is that file's text (``sidecar reload --config``): its relative
        # names resolve next to it, and SIGHUP rereads it from now on.
        file = request.query.get("file") or None
        if file is not None and not os.path.isabs(file):
            return _error(400, "file: must be an absolute path")
        try:
            if raw.strip():
                base = Path(file).parent if file is not None else None
                # Bytes, not text: non-UTF-8, deep or alias-bomb bodies are ConfigErrors (400).
                loaded = parse_config_text(raw, source=file or "POST /v1/config", base_dir=base)
            else:
                if file is None:
                    file = sc.config_path
                if file is None:
                    return _error(400, "no body and no config file to re-read")
                from sidecar.config import load_config

                loaded = load_config(file)
            changed = await sc.reload(loaded, actor=actor, reason=body_reason or "admin API",
                                      file=file)
        except ConfigError as exc:
            return _error(
                400, "config rejected; the previous config keeps serving",
                problems=[{"path": p, "message": m} for p, m in exc.problems],
                version=sc.loaded.version,
            )
        return _json({"version": sc.loaded.version, "changed": changed,
                      "file": sc.config_path})

    async def _outcomes(self, request: web.Request) -> web.StreamResponse:
        from sidecar.outcomes.http import handle_post_outcomes

        return await handle_post_outcomes(request, self._sidecar.outcomes)
