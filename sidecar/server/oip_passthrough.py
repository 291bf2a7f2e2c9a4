"""The rest of the Open Inference Protocol through the sidecar, with model names mapped.

``ModelInfer`` runs through routes (mirrored, recorded). The protocol's other calls
(``ServerLive``, ``ServerReady``, ``ServerMetadata``, ``ModelReady``, ``ModelMetadata``, and
whatever else the server offers on ``inference.GRPCInferenceService``, such as Triton's
``ModelConfig`` or ``RepositoryIndex``) go to the primary of the route that serves the model
they name, with the name mapped as for ModelInfer, so that a client sees the server as if it
called it directly. They are neither recorded nor mirrored.

A call for a model goes to its per-model route's primary, else the default route's (the
plain ``ModelInfer`` match), else it is NOT_FOUND naming the model. A server-level call goes
to the default route's primary, else to the first per-model route's. A ModelMetadata answer
names the model the caller asked for. An exact route for a method wins over this module.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from sidecar.codecs import CodecError
from sidecar.codecs.oip_header import ModelRef, ModelRewrite, read_model
from sidecar.config import Config

__all__ = [
    "INFER",
    "OIP_SERVICE",
    "ModelTable",
    "ModelTarget",
    "OipPassthrough",
    "backend_rewrite",
]

log = logging.getLogger(__name__)

OIP_SERVICE = "inference.GRPCInferenceService"
INFER = f"/{OIP_SERVICE}/ModelInfer"
_PREFIX = f"/{OIP_SERVICE}/"
#: Requests that name a model in field 1 and its version in field 2 (KServe v2 and Triton).
_MODEL_ADDRESSED = frozenset(
    _PREFIX + m for m in ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics")
)
#: Answers that name the model in field 1: renamed back to the caller's name.
_RENAMED_ANSWERS = frozenset({_PREFIX + "ModelMetadata"})
#: Streams and inference stay with the routes (recorded, mirrored), never passed through.
_NOT_PASSED = frozenset({INFER, _PREFIX + "ModelStreamInfer"})
#: Deadline of a passed call when the caller set none (metadata calls are quick).
DEFAULT_TIMEOUT_S = 10.0
#: Metadata never forwarded: the transport's own and per-hop keys.
_HOP = frozenset({"connection", "keep-alive", "te", "transfer-encoding", "upgrade",
                  "proxy-connection", "host", "content-type", "user-agent", "grpc-timeout",
                  "grpc-encoding", "grpc-accept-encoding"})


class Upstream(Protocol):
    """What the passthrough needs of a backend (sidecar.backends.Backend has it)."""

    name: str
    config: Any

    async def call(self, method: str, request: bytes, *, timeout: float,
                   metadata: tuple[tuple[str, str | bytes], ...]) -> Any: ...


def backend_rewrite(config: Any) -> ModelRewrite | None:
    """The model name and version a backend is asked for (``backends[].model``)."""
    return ModelRewrite.of(getattr(config, "model", None), getattr(config, "model_version", None))


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """Where one model's protocol calls go: a route's primary and its rewrite."""

    route: str
    backend: Upstream
    rewrite: ModelRewrite | None
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Which route serves each model on the OIP service of one config version."""

    by_model: Mapping[str, ModelTarget]
    default: ModelTarget | None
    #: Methods a route matches exactly: those stay with the routes.
    exact: frozenset[str]

    @classmethod
    def build(cls, config: Config, backends: Mapping[str, Upstream]) -> ModelTable:
        by_model: dict[str, ModelTarget] = {}
        default: ModelTarget | None = None
        for route in config.routes:
            if route.codec != "oip" or route.method != INFER:
                continue
            backend = backends[route.primary]
            target = ModelTarget(route.match, backend, backend_rewrite(backend.config),
                                 route.timeout_ms / 1000)
            if route.model is None:
                default = target
            else:
                by_model[route.model] = target
        exact = frozenset(r.method for r in config.routes if r.method.startswith(_PREFIX))
        return cls(by_model, default, exact - {INFER})

    @property
    def per_model(self) -> bool:
        """Some route takes one model's calls: ModelInfer must read the model name."""
        return bool(self.by_model)

    @property
    def enabled(self) -> bool:
        return self.default is not None or bool(self.by_model)

    def for_model(self, name: str) -> ModelTarget | None:
        """The model's own route, else the default route, else None."""
        return self.by_model.get(name, self.default)

    def for_server(self) -> ModelTarget | None:
        if self.default is not None:
            return self.default
        return next(iter(self.by_model.values()), None)

    def handles(self, method: str) -> bool:
        """Is ``method`` answered here rather than by a route?"""
        return (self.enabled and method.startswith(_PREFIX) and method not in _NOT_PASSED
                and method not in self.exact)


def _forwarded(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in (metadata or ())
                 if k not in _HOP and not k.startswith(":"))


def _answer_metadata(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in (metadata or ())
                 if not k.startswith("grpc-") and not k.startswith(":"))


Behavior = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class OipPassthrough(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs
    """A generic handler for the OIP calls other than inference (see the module doc).

    Registered before the route handler; it answers only what :meth:`ModelTable.handles`
    says, so every other method falls through to the routes. :meth:`swap` installs the
    table of a reloaded config; calls in flight finish on the old one.
    """

    def __init__(self, table: ModelTable, *, stopping: Callable[[], bool] = lambda: False
                 ) -> None:
        self._table = table
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}
        #: True once the sidecar refuses new calls: they fall through to the route handler.
        self._stopping = stopping

    @property
    def table(self) -> ModelTable:
        return self._table

    def swap(self, table: ModelTable) -> None:
        self._table = table
        self._handlers = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method
        if not self._table.handles(method) or self._stopping():
            return None
        handler = self._handlers.get(method)
        if handler is None:
            handler = grpc.unary_unary_rpc_method_handler(self._behavior(method))
            if len(self._handlers) < 1000:  # names come from callers: bound the cache
                self._handlers[method] = handler
        return handler

    def _behavior(self, method: str) -> Behavior:
        async def behavior(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
                           ) -> bytes:
            return await self.forward(method, request, context)

        return behavior

    async def forward(self, method: str, request: bytes,
                      context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        """Pass one call to the primary that serves its model; its answer, name mapped."""
        table = self._table
        asked: ModelRef | None = None
        if method in _MODEL_ADDRESSED:
            try:
                asked = read_model(request)
            except CodecError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{method}: unreadable request ({exc})")
                raise  # abort raises; this line only tells the type checker
            target = table.for_model(asked.name)
            if target is None:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"no route serves model {asked.name!r}")
        else:
            target = table.for_server()
        assert target is not None  # enabled tables have one; abort raises
        sent = request
        if asked is not None and asked.name and target.rewrite is not None:
            sent = target.rewrite.apply(request)  # (no name: e.g. statistics of every model)
        remaining = context.time_remaining()
        timeout = DEFAULT_TIMEOUT_S if remaining is None else max(0.001, remaining)
        outcome = await target.backend.call(
            method, sent, timeout=timeout, metadata=_forwarded(context.invocation_metadata()))
        trailing = _answer_metadata(outcome.trailing_metadata)
        if trailing:
            context.set_trailing_metadata(trailing)
        if not outcome.ok:
            await context.abort(outcome.code, outcome.details or "")
        response: bytes = outcome.response
        if sent is not request and asked is not None and target.rewrite is not None \
                and method in _RENAMED_ANSWERS:
            try:
                response = target.rewrite.restore(response, asked)
            except CodecError as exc:  # the backend's bytes go back as they came
                log.debug("%s answer of %s not renamed: %s", method, target.backend.name, exc)
        return response
