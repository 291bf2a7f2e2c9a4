"""The gRPC transport: a generic handler that hands raw bytes to the forwarding core.

It only translates between ``grpc.aio`` and :class:`Dispatch`; no routing logic lives here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sidecar.routing import RoutePlan
from sidecar.server.forwarding import REQUEST_ID, Dispatch, reply_metadata
from sidecar.server.streaming import StreamForwarder

__all__ = ["ProxyHandler"]

log = logging.getLogger(__name__)

Behavior = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class ProxyHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs: base is Any
    """Answers every method: routed ones are forwarded, others get UNIMPLEMENTED."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._dispatch = dispatch
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

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
        handlers = self._handlers
        handler = handlers.get(method)
        if handler is None:
            dispatch = self._dispatch
            plan = dispatch.routes.match(method)
            if plan is None:
                handler = grpc.unary_unary_rpc_method_handler(_unrouted(method))
            else:
                handler = _handler_for(dispatch, plan, method)
            if len(handlers) < 10_000:  # unrouted names come from callers: bound the cache
                handlers[method] = handler
        return handler


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


def _forward(dispatch: Dispatch, plan: RoutePlan, method: str) -> Behavior:
    async def behavior(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        answer = await dispatch.forward(
            plan, method, request, context.invocation_metadata() or (), context.time_remaining()
        )
        outcome = answer.outcome
        initial = (*reply_metadata(outcome.initial_metadata), (REQUEST_ID, answer.request_id))
        decision = answer.decision
        if decision is not None:
            initial = (
                *initial,
                ("x-experiment", decision.experiment or ""),
                ("x-variant", decision.variant or ""),
            )
        await context.send_initial_metadata(initial)
        trailing = reply_metadata(outcome.trailing_metadata)
        if outcome.response is not None and outcome.ok:
            if trailing:
                context.set_trailing_metadata(trailing)
            return outcome.response
        await context.abort(outcome.code, outcome.details or "", trailing)
        raise AssertionError("unreachable")

    return behavior
