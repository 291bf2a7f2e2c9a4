"""Shadowcar's one error tree, and the single table that maps it to gRPC status codes.

    ShadowcarError
    ├── ConfigError            a configuration file or value is invalid (names the field path)
    ├── RoutingError           no route matches a method                     -> UNIMPLEMENTED
    ├── BackendError           a backend call could not be made               -> UNAVAILABLE
    ├── OverloadError          a bounded resource is full                     -> RESOURCE_EXHAUSTED
    ├── BatchTooLarge          an outcome batch over its limit (also ValueError) -> INVALID_ARGUMENT
    └── SinkError              the recording database cannot be opened/written

Foreign exceptions are translated at the boundary with ``raise X from exc``.
"""

from __future__ import annotations

import grpc

__all__ = [
    "BackendError",
    "BatchTooLarge",
    "ConfigError",
    "OverloadError",
    "RoutingError",
    "ShadowcarError",
    "SinkError",
    "status_for",
]


class ShadowcarError(Exception):
    """Base of every error Shadowcar raises on purpose."""


class ConfigError(ShadowcarError):
    """An invalid configuration; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = problems
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in problems]
        prefix = f"invalid config {source}" if source else "invalid config"
        super().__init__(prefix + ":\n  " + "\n  ".join(lines))


class RoutingError(ShadowcarError):
    """No route matches the called method."""


class BackendError(ShadowcarError):
    """A backend could not be called at all (bad target, closed channel)."""


class OverloadError(ShadowcarError):
    """A bounded resource (queue, in-flight cap) is full."""


class BatchTooLarge(ShadowcarError, ValueError):
    """A batch holds more events than allowed; nothing of it was stored.

    Transports answer HTTP 413 or gRPC INVALID_ARGUMENT.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"events: a batch may hold at most {limit} events, got {size}; split it")


class SinkError(ShadowcarError):
    """The recording database could not be opened or written."""


_STATUS: dict[type[ShadowcarError], grpc.StatusCode] = {
    RoutingError: grpc.StatusCode.UNIMPLEMENTED,
    BackendError: grpc.StatusCode.UNAVAILABLE,
    OverloadError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BatchTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status a caller sees for ``exc`` (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        code = _STATUS.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
