"""The one table from Shadowcar's errors to the gRPC status a caller sees."""

from __future__ import annotations

import grpc

from sidecar.errors import (
    BackendError,
    BatchTooLarge,
    ConfigError,
    OverloadError,
    RoutingError,
    status_for,
)


def test_each_error_maps_to_its_status() -> None:
    assert status_for(RoutingError("x")) is grpc.StatusCode.UNIMPLEMENTED
    assert status_for(BackendError("x")) is grpc.StatusCode.UNAVAILABLE
    assert status_for(OverloadError("x")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(BatchTooLarge(5, 1)) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(ConfigError([("a", "b")])) is grpc.StatusCode.INTERNAL
    assert status_for(ValueError("foreign")) is grpc.StatusCode.INTERNAL
