"""Backend clients: one grpc.aio channel per backend, raw bytes in and out.

A call never raises for a gRPC failure: it returns a :class:`CallOutcome` whose status,
details and metadata are the backend's own, so they can reach the caller unchanged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc

from sidecar.config import BackendConfig
from sidecar.resilience.breaker import CircuitBreaker

__all__ = ["Backend", "CallOutcome", "Metadata"]

Metadata = tuple[tuple[str, str | bytes], ...]

_OK = grpc.StatusCode.OK
#: Bytes of a stream kept for recording; the rest is counted, not kept.
MAX_RECORDED = 1 << 20


@dataclass(slots=True)
class CallOutcome:
    """What one backend call produced."""

    code: grpc.StatusCode
    details: str | None
    response: bytes | None
    initial_metadata: Metadata
    trailing_metadata: Metadata
    started: float
    latency_ms: float
    #: A stream's message count and time to its first message (None for unary calls).
    messages: int | None = None
    first_message_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.code is _OK


def _as_tuples(md: Any) -> Metadata:
    if not md:
        return ()
    return tuple((m[0], m[1]) for m in md)


class Backend:
    """A named, versioned model endpoint and the channel that reaches it."""

    def __init__(
        self,
        config: BackendConfig,
        *,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, str]] | None = None,
    ) -> None:
        self.name = config.name
        self.version = config.version
        self.target = config.target
        self.config = config
        channel_options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 0),
            *(options or []),
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(config.target, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(
                config.target, credentials, options=channel_options
            )
        self._methods: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self.breaker = CircuitBreaker(config.breaker, name=config.name)
        self._streams: dict[str, Any] = {}
        self._closed = False

    def _method(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        stub = self._methods.get(method)
        if stub is None:
            # No serializers: bytes pass through untouched.
            stub = self._channel.unary_unary(method)
            self._methods[method] = stub
        return stub

    async def call(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> CallOutcome:
        """Call ``method`` with raw ``request`` bytes; never raises for gRPC errors."""
        started = time.time()
        t0 = time.perf_counter()
        call = self._method(method)(request, timeout=timeout, metadata=metadata)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            return CallOutcome(
                exc.code(),
                exc.details(),
                None,
                _as_tuples(exc.initial_metadata()),
                _as_tuples(exc.trailing_metadata()),
                started,
                (time.perf_counter() - t0) * 1000,
            )
        latency = (time.perf_counter() - t0) * 1000
        return CallOutcome(
            _OK,
            None,
            response,
            _as_tuples(await call.initial_metadata()),
            _as_tuples(await call.trailing_metadata()),
            started,
            latency,
        )

    async def drain(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata
    ) -> CallOutcome:
        """Call server-streaming ``method`` and read its whole stream (a shadow's copy): the
        first ``MAX_RECORDED`` bytes kept, every message counted; never raises for gRPC
        errors."""
        started = time.time()
        t0 = time.perf_counter()
        call = self.stream("server", method)(request, timeout=timeout, metadata=metadata)
        parts: list[bytes] = []
        size = messages = 0
        first: float | None = None
        code, details = _OK, None
        try:
            async for message in call:
                messages += 1
                if first is None:
                    first = (time.perf_counter() - t0) * 1000
                if size < MAX_RECORDED:
                    parts.append(message)
                size += len(message)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
        finally:
            call.cancel()
        return CallOutcome(code, details, b"".join(parts), (), (), started,
                           (time.perf_counter() - t0) * 1000, messages, first)

    def stream(self, kind: str, method: str) -> Any:
        """A raw-bytes multicallable for a streaming method (``server``, ``client``, ``bidi``)."""
        key = f"{kind}:{method}"
        stub = self._streams.get(key)
        if stub is None:
            factory = {
                "server": self._channel.unary_stream,
                "client": self._channel.stream_unary,
                "bidi": self._channel.stream_stream,
            }[kind]
            stub = factory(method)
            self._streams[key] = stub
        return stub

    async def wait_ready(self, timeout: float) -> bool:
        """Try to connect within ``timeout``; True when the channel is ready."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def aclose(self, grace: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        await self._channel.close(grace)
