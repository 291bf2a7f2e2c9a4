"""The gRPC transport: a generic handler that hands raw bytes to the forwarding core.

It only translates between ``grpc.aio`` and :class:`Dispatch`; no routing logic lives here.
At shutdown (:func:`stop_serving`) it holds new calls until the listener is closed, then
answers them UNAVAILABLE, which clients retry elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sidecar.backends.channel import OIP_INFER_METHODS
from sidecar.codecs.oip_header import read_model
from sidecar.codecs.tensor import CodecError
from sidecar.config.models import ShutdownConfig
from sidecar.routing import RoutePlan
from sidecar.server.call import Call
from sidecar.server.forwarding import Dispatch, reply_metadata, request_id_metadata
from sidecar.server.streaming import StreamForwarder

__all__ = ["ProxyHandler", "stop_serving"]

log = logging.getLogger(__name__)

Behavior = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class ProxyHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs: base is Any
    """Answers every method: routed ones are forwarded, others get UNIMPLEMENTED."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}
        #: Set once the sidecar shuts down: new calls are held, then refused.
        self._refusing: _Refusal | None = None

    def swap(self, dispatch: Dispatch) -> None:
        """Serve new calls from ``dispatch``; calls in flight finish on the old one."""
        self._dispatch = dispatch
        self._handlers = {}

    @property
    def dispatch(self) -> Dispatch:
        return self._dispatch

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method
        if self._refusing is not None:
            return self._refusing.handler(self._dispatch.routes.match(method))
        handlers = self._handlers
        handler = handlers.get(method)
        if handler is None:
            dispatch = self._dispatch
            plan = dispatch.routes.match(method)
            if dispatch.routes.per_model(method):
                handler = grpc.unary_unary_rpc_method_handler(_per_model(dispatch, method))
            elif plan is None:
                handler = grpc.unary_unary_rpc_method_handler(_unrouted(method))
            else:
                handler = _handler_for(dispatch, plan, method)
            if len(handlers) < 10_000:  # unrouted names come from callers: bound the cache
                handlers[method] = handler
        return handler

    def refuse_new_calls(self) -> _Refusal:
        """From now on hold every new call, then answer it UNAVAILABLE (shutdown)."""
        if self._refusing is None:
            self._refusing = _Refusal()
        return self._refusing

    @property
    def refusing(self) -> bool:
        """New calls are held and refused (the sidecar is stopping)."""
        return self._refusing is not None

    @property
    def refused(self) -> int:
        """Calls answered UNAVAILABLE because they arrived during shutdown."""
        return self._refusing.arrived if self._refusing is not None else 0


class _Refusal:
    """Shutdown: every new call is held until the listener is closed, then answered
    UNAVAILABLE. Holding it (rather than answering at once) keeps a client's next call
    from landing in the gRPC core's backlog, which the core cancels (CANCELLED, a status
    clients do not retry) when the server stops."""

    def __init__(self) -> None:
        self.arrived = 0
        self.listener_closed = asyncio.Event()
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def handler(self, plan: RoutePlan | None) -> grpc.RpcMethodHandler[bytes, bytes]:
        self.arrived += 1
        kind = plan.config.streaming if plan is not None else "unary"
        handler = self._handlers.get(kind)
        if handler is None:
            handler = self._handlers[kind] = self._build(kind)
        return handler

    async def _refuse(self, context: Any) -> None:
        await self.listener_closed.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            "the sidecar is shutting down; retry on another instance")

    def _build(self, kind: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        # The request is never read: a held stream costs nothing but its slot.
        async def single(request: Any, context: Any) -> bytes:
            await self._refuse(context)
            raise AssertionError("unreachable")  # abort always raises

        async def stream(request: Any, context: Any) -> AsyncIterator[bytes]:
            await self._refuse(context)
            yield b""  # unreachable: makes this the async generator grpc.aio expects

        if kind == "unary":
            return grpc.unary_unary_rpc_method_handler(single)
        if kind == "server":
            return grpc.unary_stream_rpc_method_handler(stream)
        if kind == "client":
            return grpc.stream_unary_rpc_method_handler(single)
        return grpc.stream_stream_rpc_method_handler(stream)


async def stop_serving(
    server: grpc.aio.Server, handler: ProxyHandler | None, settings: ShutdownConfig
) -> None:
    """Stop the listener without cancelling a call that arrives meanwhile: hold new calls
    until none arrived for ``drain_quiet_ms`` (at most ``drain_s``), close the listener
    (later calls are refused by the transport, UNAVAILABLE at the client), answer the held
    calls UNAVAILABLE, and give calls in flight ``grace_s`` to finish."""
    if handler is not None and settings.drain_s > 0:
        refusal = handler.refuse_new_calls()
        quiet = settings.drain_quiet_ms / 1000
        until = time.monotonic() + settings.drain_s
        seen = -1
        while refusal.arrived != seen and time.monotonic() < until:
            seen = refusal.arrived
            await asyncio.sleep(quiet)
        stopping = asyncio.ensure_future(server.stop(settings.grace_s))
        await asyncio.sleep(0)  # the stop's first step has closed the listener
        refusal.listener_closed.set()
        await stopping
        if refusal.arrived:
            log.info("%d calls that arrived during shutdown were answered UNAVAILABLE",
                     refusal.arrived)
        return
    await server.stop(settings.grace_s)


def _handler_for(
    dispatch: Dispatch, plan: RoutePlan, method: str
) -> grpc.RpcMethodHandler[bytes, bytes]:
    kind = plan.config.streaming
    if kind == "unary":
        return grpc.unary_unary_rpc_method_handler(_forward(dispatch, plan, method))
    streams = StreamForwarder(dispatch)
    if kind == "server":

        # grpc.aio recognises async generator functions only: relay through one.
        async def server(request: bytes, context: Any) -> AsyncIterator[bytes]:
            async for message in streams.server_stream(plan, method, request, context):
                yield message

        return grpc.unary_stream_rpc_method_handler(server)
    if kind == "client":

        async def client(requests: AsyncIterator[bytes], context: Any) -> bytes:
            return await streams.client_stream(plan, method, requests, context)

        return grpc.stream_unary_rpc_method_handler(client)

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for message in streams.bidi_stream(plan, method, requests, context):
            yield message

    return grpc.stream_stream_rpc_method_handler(bidi)


def _unrouted(method: str) -> Behavior:
    async def behavior(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not routed by this sidecar"
        )
        raise AssertionError("unreachable")  # abort always raises

    return behavior


def _per_model(dispatch: Dispatch, method: str) -> Behavior:
    """A method with per-model routes: each call goes to the route of the model its request
    names (read from the leading fields, tensors untouched), else the method's default
    route, else NOT_FOUND naming the model (docs/oip.md)."""
    routes = dispatch.routes
    forwards: dict[int, Behavior] = {}  # plan -> its behavior; as many as the routes

    async def behavior(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        model: str | None = None
        why = ""
        try:
            model = read_model(request).name
        except CodecError as exc:
            why = f"{method}: the model name cannot be read ({exc})"
        plan = routes.for_model(method, model)
        if plan is None:
            if model is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no route serves model {model!r}")
            raise AssertionError("unreachable")  # abort always raises
        forward = forwards.get(id(plan))
        if forward is None:
            forward = forwards[id(plan)] = _forward(dispatch, plan, method)
        return await forward(request, context)

    return behavior


def _as_asked(call: Call, response: bytes) -> bytes:
    """The serving backend's answer; one asked for another model name (``backends[].model``)
    names the caller's model again (only field 1: docs/oip.md). Called for inference
    methods only (``_forward`` checks the method once per route)."""
    backend = call.backend if call.served is call.outcome else call.plan.fallback_backend
    rewrite = backend.rewrite if backend is not None else None
    if rewrite is None or rewrite.name is None:
        return response
    try:
        return rewrite.restore(response, read_model(call.request))
    except CodecError:  # an answer we cannot read goes back as it came
        return response


def _forward(dispatch: Dispatch, plan: RoutePlan, method: str) -> Behavior:
    placement = plan.reply
    # Some backend that may serve renames the model: its answers are named back (else the
    # answer is never read).
    renames = method in OIP_INFER_METHODS and any(
        b.rewrite is not None and b.rewrite.name is not None for b in plan.backends.values())

    async def behavior(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        call = await dispatch.forward(
            plan, method, request, context.invocation_metadata() or (), context.time_remaining()
        )
        outcome = call.served
        assert outcome is not None
        trailing = reply_metadata(outcome.trailing_metadata)
        # The backend's own initial metadata goes on as it came; ours rides in the trailers
        # (free: no separate write) unless the route asks for headers.
        if placement == "headers":
            await context.send_initial_metadata(
                (*reply_metadata(outcome.initial_metadata), *request_id_metadata(call)))
        else:
            if outcome.initial_metadata:
                initial = reply_metadata(outcome.initial_metadata)
                if initial:
                    await context.send_initial_metadata(initial)
            if placement == "trailers":
                trailing = (*trailing, *request_id_metadata(call))
        if outcome.response is not None and outcome.ok:
            if trailing:
                context.set_trailing_metadata(trailing)
            if renames:
                return _as_asked(call, outcome.response)
            return outcome.response
        await context.abort(outcome.code, outcome.details or "", trailing)
        raise AssertionError("unreachable")

    return behavior
