"""Backend clients: one grpc.aio channel per backend, raw bytes in and out.

A call never raises for a gRPC failure: it returns a :class:`CallOutcome` whose status,
details and metadata are the backend's own, so they can reach the caller unchanged.

A backend with an OIP model name (``backends[].model``, ``model_version``) is sent its own
name in every inference request, whoever sends it (serving, shadows, variants, canaries,
fallbacks, streams, replay, gold runs): :meth:`Backend.prepare` (docs/oip.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from sidecar.codecs.oip_header import ModelRef, ModelRewrite, read_model
from sidecar.codecs.tensor import CodecError
from sidecar.config import BackendConfig
from sidecar.resilience.breaker import CircuitBreaker

__all__ = ["Backend", "CallOutcome", "Metadata", "StreamKind"]

Metadata = tuple[tuple[str, str | bytes], ...]
#: A streaming call's shape: one request and many answers, many and one, many and many.
StreamKind = Literal["server", "client", "bidi"]

_OK = grpc.StatusCode.OK
#: OIP methods whose requests are ModelInferRequests: the ones a model name is rewritten in.
OIP_INFER_METHODS = frozenset({"/inference.GRPCInferenceService/ModelInfer",
                               "/inference.GRPCInferenceService/ModelStreamInfer"})
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
        #: The model name and version this backend is asked for, or None (as the caller asks).
        self.rewrite = ModelRewrite.of(config.model, config.model_version)

    def prepare(self, method: str, request: bytes) -> bytes:
        """``request`` as this backend is sent it: an OIP inference request names the
        backend's own model; anything else (and a backend without one) as it came, the
        same object."""
        rewrite = self.rewrite
        if rewrite is None or method not in OIP_INFER_METHODS:
            return request
        try:
            return rewrite.apply(request)
        except CodecError:  # unreadable: the backend's own answer says why
            return request

    def _method(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        stub = self._methods.get(method)
        if stub is None:
            # No serializers: bytes pass through untouched.
            stub = self._channel.unary_unary(method)
            self._methods[method] = stub
        return stub

    async def call(
        self, method: str, request: bytes, *, timeout: float, metadata: Metadata,
        replied_metadata: bool = True,
    ) -> CallOutcome:
        """Call ``method`` with raw ``request`` bytes; never raises for gRPC errors.
        ``replied_metadata=False`` (a shadow's copy, whose metadata nobody reads) skips
        reading the answer's metadata back into Python."""
        started = time.time()
        t0 = time.perf_counter()
        if self.rewrite is not None:
            request = self.prepare(method, request)
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
        if not replied_metadata:
            return CallOutcome(_OK, None, response, (), (), started, latency)
        return CallOutcome(
            _OK,
            None,
            response,
            _as_tuples(await call.initial_metadata()),
            _as_tuples(await call.trailing_metadata()),
            started,
            latency,
        )

    def stream(self, kind: StreamKind, method: str) -> Any:
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
            if self.rewrite is not None and method in OIP_INFER_METHODS:
                stub = _Renaming(stub, kind, method, self.prepare, self.rewrite)
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


class _Renaming:
    """A stream multicallable whose request messages name the backend's model; on a bidi
    stream (``ModelStreamInfer``) its answers name the caller's model again."""

    def __init__(self, inner: Any, kind: StreamKind, method: str, prepare: Any,
                 rewrite: ModelRewrite | None = None) -> None:
        self._inner, self._kind, self._method, self._prepare = inner, kind, method, prepare
        self._rewrite = rewrite

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        if self._kind == "server":
            return self._inner(self._prepare(self._method, request), **kwargs)
        rewrite = self._rewrite
        if self._kind != "bidi" or rewrite is None or rewrite.name is None:
            return self._inner(self._each(request, None), **kwargs)
        asked: list[ModelRef] = []
        return _RenamedAnswers(self._inner(self._each(request, asked), **kwargs), rewrite,
                               asked)

    async def _each(self, requests: AsyncIterator[bytes],
                    asked: list[ModelRef] | None) -> AsyncIterator[bytes]:
        async for message in requests:
            if asked is not None:  # the model the caller asked for last names the answers
                try:
                    asked[:] = [read_model(message)]
                except CodecError:
                    pass  # unreadable: sent as it came, the backend's answer says why
            yield self._prepare(self._method, message)


class _RenamedAnswers:
    """A bidi call whose answers name the model the caller asked for (the rest of the call,
    metadata, status and cancel, is the call's own)."""

    def __init__(self, call: Any, rewrite: ModelRewrite, asked: list[ModelRef]) -> None:
        self._call, self._rewrite, self._asked = call, rewrite, asked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for message in self._call:
            if self._asked:
                try:
                    message = self._rewrite.restore_streamed(message, self._asked[0])
                except CodecError:
                    pass  # an answer we cannot read goes back as it came
            yield message
