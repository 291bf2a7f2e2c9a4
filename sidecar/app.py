"""The composition root: builds the sidecar from a config, starts it, and stops it in order.

Start: telemetry -> sink -> backends -> canaries -> dispatch -> gRPC server (+ health,
reflection) -> owned tasks -> admin. Each part, once started, pushes its stop onto one exit
stack, so a stop (or a start that fails half way) unwinds exactly what started, each step
with a deadline: owned tasks cancelled -> health NOT_SERVING, stop accepting and drain
in-flight calls -> let shadows end -> canaries -> close channels -> admin -> flush the
sink -> close exporters. The per-call work lives in ``server/``, ``mirror/`` and
``routing/``; the views in ``telemetry/live_view.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace.export import SpanExporter

from sidecar.backends import Backend
from sidecar.backends.tls import backend_credentials, server_credentials
from sidecar.canary import CanaryController, CanarySupervisor
from sidecar.config import BackendConfig, LoadedConfig, canonical_json
from sidecar.config.reload import check_reload
from sidecar.errors import ConfigError, ShadowcarError
from sidecar.mirror import Mirror
from sidecar.outcomes import FeedbackAuth, OutcomeIngest, add_feedback_service
from sidecar.routing import LiveCounters, RoutePlan, RouteTable
from sidecar.server import Dispatch, ProxyHandler, stop_serving
from sidecar.server.oip_passthrough import ModelTable, OipPassthrough
from sidecar.server.proxied_services import (
    ProxiedHealth,
    ProxiedReflection,
    ServiceMap,
    add_reflection,
)
from sidecar.sink import AuditRecord, DuckDBSink
from sidecar.tasks import TaskOwner
from sidecar.telemetry import Metrics, ModelHealth, Tracing
from sidecar.telemetry.backend_errors import BackendErrors
from sidecar.telemetry.live_view import experiments_view, live_stats
from sidecar.telemetry.observer import CallObserver
from sidecar.telemetry.spans import Spans, spans_for
from sidecar.telemetry.tracing import host_port

if TYPE_CHECKING:  # imported where configured: a sidecar without them never loads aiohttp
    from sidecar.admin import AdminServer
    from sidecar.export import PeriodicExport
    from sidecar.notify import WebhookNotifier

__all__ = ["Sidecar"]

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME  # grpc.health.v1.Health


class Sidecar:
    """One running sidecar; an async context manager with an idempotent ``aclose``."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        span_exporter: SpanExporter | None = None,
        config_path: str | None = None,
        worker_index: int = 0,
        workers: int = 1,
    ) -> None:
        self.loaded = loaded
        self.worker_index = worker_index
        self.workers = workers
        #: The file SIGHUP (and a bodiless reload) rereads: the one most recently loaded.
        self.config_path = config_path
        cfg = loaded.config
        #: Every live counter of the process (requests, lanes, calls, assignments).
        self.live = LiveCounters()
        #: Every background task of the sidecar (readiness, triggers, reloads, retirements).
        self.tasks = TaskOwner()
        #: What started, to stop in reverse: pushed by each part as it starts.
        self._stack = AsyncExitStack()
        self._reload_lock = asyncio.Lock()
        #: name -> (kind, fired) of the last trigger evaluation; read by metrics.
        self.trigger_state: dict[str, tuple[str, bool]] = {}
        self.health = ModelHealth(cfg.telemetry.health_window)
        self.backend_errors = BackendErrors(cfg.telemetry.backend_errors)
        self.tracing = Tracing(cfg.telemetry, exporter=span_exporter)
        #: The tracer the hot path uses: None when no span would be exported.
        self._hot_tracing = self.tracing if self.tracing.exporting else None
        self.metrics = Metrics(cfg.telemetry, self)
        self._stack.push_async_callback(self._close_telemetry)
        self.sink = DuckDBSink(cfg.storage, on_call=CallObserver(
            self.metrics, self.backend_errors, self.health))
        self.sink.on_flush = self.metrics.flush_duration.record
        self.export: PeriodicExport | None = None
        if cfg.storage.export.dir:
            from sidecar.export import PeriodicExport

            self.export = PeriodicExport(cfg.storage.export, self.sink)
        self.notifier: WebhookNotifier | None = None
        if cfg.notify.webhook:
            from sidecar.notify import WebhookNotifier

            self.notifier = WebhookNotifier.from_config(cfg.notify)
        #: Every route's canary controller and evaluation task (replaced there, not here).
        self.canary = CanarySupervisor(
            self.sink, audit=self.audit, version=lambda: self.loaded.version,
            notify=self.notifier.notify if self.notifier is not None else None,
        )
        self.mirror = Mirror(self.sink.record_call, live=self.live,
                             spans=spans_for(self._hot_tracing))
        self._spans: Spans = self.mirror.spans
        self.backends: dict[str, Backend] = {}
        #: Who answers health and reflection for each proxied service (docs/oip.md).
        self._services = ServiceMap({}, None)
        self.health_servicer = ProxiedHealth(lambda: self._services)
        self._oip: OipPassthrough | None = None
        oc = cfg.outcomes
        self.outcomes = OutcomeIngest(
            self.sink, max_events=oc.max_events, recent_ids=oc.recent_ids,
            max_future_s=oc.max_future_s, unit_redactor=lambda: self.loaded.unit_redactor,
        )
        self._server: grpc.aio.Server | None = None
        self._handler: ProxyHandler | None = None
        self.admin: AdminServer | None = None
        self.port: int = 0
        self.draining = False
        self.primaries_ready = False
        self._stopped = asyncio.Event()
        self._closed = False

    @property
    def canaries(self) -> dict[str, CanaryController]:
        """route -> its canary controller now (a snapshot; the supervisor owns them)."""
        return dict(self.canary.controllers)

    @property
    def dispatch(self) -> Dispatch:
        assert self._handler is not None, "sidecar not started"
        return self._handler.dispatch

    async def _reflection_codecs(self, loaded: LoadedConfig) -> None:
        """``codec: reflection`` routes read the primary's descriptors at start. A backend
        without reflection is logged and its route recorded undecoded; serving goes on."""
        from sidecar.codecs import CodecError
        from sidecar.codecs.reflection import route_json_codec

        for route in loaded.config.routes:
            if route.codec != "reflection" or route.match in loaded.codecs:
                continue
            target = self.backends[route.primary].target
            try:
                loaded.codecs[route.match] = await route_json_codec(
                    "reflection", match=route.match, primary_target=target,
                    compare=route.compare_fields,
                )
            except CodecError as exc:
                log.warning("route %s: no reflection descriptors from %s (%s); recording it "
                            "undecoded", route.match, target, exc)

    @staticmethod
    def _backend(loaded: LoadedConfig, config: BackendConfig) -> Backend:
        creds, options = backend_credentials(loaded, config.name)
        return Backend(config, max_message_bytes=loaded.config.max_message_bytes,
                       credentials=creds, options=options)

    async def _trigger_loop(self) -> None:
        """Evaluate the retraining triggers on a schedule (owned task, cancelled at close)."""
        while True:
            await asyncio.sleep(self.loaded.config.triggers_every_s)
            try:
                await self.check_triggers()
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed look must not end the schedule
                log.exception("trigger evaluation failed")

    async def check_triggers(self) -> list[Any]:
        """One evaluation: fired triggers are audited, counted and sent to the webhook."""
        import datetime as dt

        from sidecar.triggers import evaluate_triggers

        cfg = self.loaded.config

        def run() -> list[Any]:
            self.sink.wait_flushed(5.0)
            cur = self.sink.cursor()
            try:
                return evaluate_triggers(cur, cfg.triggers, canonical_json(cfg),
                                         dt.datetime.now(dt.UTC))
            finally:
                cur.close()

        results = await asyncio.to_thread(run)
        for r in results:
            self.trigger_state[r.name] = (r.kind, r.fired)
            if r.fired:
                event = r.as_event()
                self.audit("triggers", "trigger.fired", None, r.message, event)
                if self.notifier is not None:
                    self.notifier.notify(event)
        return results

    def audit(
        self, actor: str, action: str, route: str | None, reason: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Write one audit row (who did what, why, under which config version)."""
        self.sink.record_audit(
            AuditRecord(time.time(), actor, action, route, reason, self.loaded.version,
                        json.dumps(detail, default=str) if detail is not None else None)
        )

    # -- reload ----------------------------------------------------------------------
    async def reload(
        self, loaded: LoadedConfig, *, actor: str, reason: str, file: str | None = None
    ) -> bool:
        """Serve ``loaded`` (read from ``file``, or None for a config sent as a body) from
        now on; in-flight calls finish on the config they started with, unchanged backends
        keep their channels. Raises ConfigError (the old config keeps serving). Returns
        False when the config is unchanged. The rule for SIGHUP: it rereads the file most
        recently loaded, so a file given here becomes the one it rereads."""
        async with self._reload_lock:
            old = self.loaded
            check_reload(old.config, loaded.config)
            if file is not None:
                self.config_path = os.path.abspath(file)
            if loaded.version == old.version:
                log.info("config unchanged (%s) by %s; SIGHUP rereads %s", old.version,
                         actor, self.config_path or "nothing (started without a file)")
                return False
            cfg = loaded.config
            backends: dict[str, Backend] = {}
            for b in cfg.backends:
                current = self.backends.get(b.name)
                if current is not None and current.config == b:
                    backends[b.name] = current
                else:
                    backends[b.name] = self._backend(loaded, b)
            retired = [b for name, b in self.backends.items() if backends.get(name) is not b]
            self.loaded = loaded
            # Before the swap: the new routing table points at the controllers it yields.
            await self.canary.apply(cfg.routes)
            await self._reflection_codecs(loaded)
            assert self._handler is not None and self._oip is not None
            self._handler.swap(self._dispatch(loaded, backends))
            self._oip.swap(ModelTable.build(cfg, backends))
            self._services = ServiceMap.build(cfg, backends)
            self.backends = backends
            self.sink.record_config(loaded.version, canonical_json(cfg))
            self.audit(actor, "config.reload", None, reason,
                       {"old_version": old.version, "new_version": loaded.version,
                        "file": file, "sighup_rereads": self.config_path})
            grace = cfg.shutdown.grace_s
            for backend in retired:
                self.tasks.spawn(backend.aclose(grace), name=f"retire {backend.name}",
                                 finish=True)
            log.info("config reloaded: %s -> %s by %s from %s; SIGHUP rereads %s",
                     old.version, loaded.version, actor, file or "a request body",
                     self.config_path or "nothing (started without a file)")
            return True

    def route_plans(self) -> list[RoutePlan]:
        return list(self._handler.dispatch.routes.plans) if self._handler is not None else []

    async def start(self) -> None:
        """Start every part in order; a part that fails stops what started before it."""
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        cfg = self.loaded.config
        stack = self._stack
        self.sink.open()
        if self.export is not None:
            self.export.start()
        stack.push_async_callback(self._close_recording)
        if self.notifier is not None:
            await self.notifier.__aenter__()
            stack.push_async_callback(self.notifier.aclose)
        stack.push_async_callback(self._close_admin)  # the admin API starts last, see below
        self.sink.record_config(self.loaded.version, canonical_json(cfg))
        stack.push_async_callback(self._close_backends)
        for backend in cfg.backends:
            self.backends[backend.name] = self._backend(self.loaded, backend)
        stack.push_async_callback(self.canary.aclose)
        await self.canary.apply(cfg.routes)
        await self._reflection_codecs(self.loaded)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                # Workers share the port; a single sidecar must not share it by accident.
                ("grpc.so_reuseport", 1 if self.workers > 1 else 0),
            ]
        )
        stack.push_async_callback(self._stop_serving)
        # The sidecar's own services come first, so a '*' route never shadows them.
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, self._server)
        feedback = add_feedback_service(self._server, self.outcomes, FeedbackAuth(
            lambda: self.loaded.admin_token, cfg.admin.allow_unauthenticated))
        own = (HEALTH_SERVICE, feedback, reflection.SERVICE_NAME)
        self.health_servicer.own = frozenset(own)
        add_reflection(self._server, ProxiedReflection(own, lambda: self._services))
        creds = server_credentials(self.loaded)
        try:
            if creds is None:
                self.port = self._server.add_insecure_port(cfg.listen)
            else:
                self.port = self._server.add_secure_port(cfg.listen, creds)
        except RuntimeError as exc:
            raise ShadowcarError(f"listen: cannot bind {cfg.listen}: {exc}") from exc
        if self.port == 0:
            raise ShadowcarError(f"listen: cannot bind {cfg.listen}")
        host, _ = host_port(cfg.listen)
        self._spans = spans_for(self._hot_tracing, (host, self.port))
        self._handler = ProxyHandler(self._dispatch(self.loaded, self.backends))
        handler = self._handler
        # The OIP calls other than inference, before the routes (an exact route still wins).
        self._oip = OipPassthrough(ModelTable.build(cfg, self.backends),
                                   stopping=lambda: handler.refusing)
        self._services = ServiceMap.build(cfg, self.backends)
        self._server.add_generic_rpc_handlers([self._oip, self._handler])
        await self.health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        stack.push_async_callback(self.tasks.cancel)
        self.tasks.spawn(self._watch_primaries(), name="readiness")
        if cfg.triggers:
            self.tasks.spawn(self._trigger_loop(), name="triggers")
        if cfg.admin.listen is not None:
            from sidecar.admin import AdminServer

            self.admin = AdminServer(self, cfg.admin.listen)
            await self.admin.start()
        log.info(
            "shadowcar serving on port %d (config %s, recording to %s, traces: %s)",
            self.port, self.loaded.version, cfg.storage.path, self.tracing.export_target,
        )

    def _dispatch(self, loaded: LoadedConfig, backends: dict[str, Backend]) -> Dispatch:
        """The routes and hot-path collaborators of one config version (start and reload)."""
        routes = RouteTable(loaded.config, backends, self.canaries, loaded.static_fallbacks,
                            loaded.redaction_keys, loaded.contracts, loaded.codecs)
        return Dispatch(routes, loaded.version, self.sink, self.mirror, live=self.live,
                        spans=self._spans)

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
        """Serve until SIGTERM/SIGINT (or :meth:`request_stop`), then shut down. SIGHUP
        reloads the config file."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

        def on_hup() -> None:
            self.tasks.spawn(self._reload_file("SIGHUP"), name="reload")

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await self._stopped.wait()
            log.info("stop requested; draining")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.aclose()

    async def _reload_file(self, actor: str) -> None:
        from sidecar.config import load_config

        if self.config_path is None:
            log.warning("reload asked but the sidecar was not started from a file")
            return
        try:
            await self.reload(load_config(self.config_path), actor=actor, reason="signal",
                              file=self.config_path)
        except ConfigError as exc:
            log.error("reload rejected; the previous config keeps serving: %s", exc)
            self.audit(actor, "config.reload_rejected", None, str(exc))

    async def aclose(self) -> None:
        """Ordered shutdown: what started, stopped in reverse, each step with its deadline.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.draining = True
        await self._stack.aclose()

    async def _stop_serving(self) -> None:
        """Health NOT_SERVING; new calls held, then answered UNAVAILABLE; in-flight calls
        get the grace; shadows end by their own deadlines."""
        cfg = self.loaded.config
        if self._server is not None:
            await self.health_servicer.enter_graceful_shutdown()
            await stop_serving(self._server, self._handler, cfg.shutdown)
        shadow_deadline = max(
            (s.timeout_ms / 1000 for r in cfg.routes for s in r.shadows), default=0.0
        )
        await self.mirror.aclose(timeout=shadow_deadline + 0.5)

    async def _close_backends(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()
        await self.tasks.join()  # retired backends' graceful closes

    async def _close_admin(self) -> None:
        if self.admin is not None:
            await self.admin.aclose()

    async def _close_recording(self) -> None:
        if self.export is not None:
            await self.export.stop()  # an export must not hold a cursor as the sink closes
        await self.sink.aclose(timeout=self.loaded.config.shutdown.sink_timeout_s)
        if self.export is not None:
            await self.export.aclose()  # the final export, from the closed file

    async def _close_telemetry(self) -> None:
        await asyncio.to_thread(self.tracing.shutdown)
        await asyncio.to_thread(self.metrics.shutdown)
        stats = self.sink.stats
        log.info(
            "shutdown complete: %s requests and %s calls written, %s dropped",
            stats.written["requests"], stats.written["calls"], sum(stats.dropped.values()),
        )

    def experiments(self) -> list[dict[str, Any]]:
        """Every experiment with its layout and exposures so far."""
        return experiments_view(self)

    def read_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """Recent audit rows, newest first, including those not yet flushed."""
        self.sink.wait_flushed()
        cur = self.sink.cursor()
        try:
            rows = cur.execute(
                "SELECT ts, actor, action, route, reason, config_version, detail FROM audit "
                "ORDER BY ts DESC LIMIT ?", [limit]
            ).fetchall()
        finally:
            cur.close()
        keys = ("ts", "actor", "action", "route", "reason", "config_version", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    @property
    def mirror_in_flight(self) -> int:
        return self.mirror.in_flight

    def stats(self) -> dict[str, Any]:
        """Live counters and model health (``telemetry/live_view.py`` shapes them)."""
        return live_stats(self)
