"""Routing: from a gRPC method to the plan of who serves it and who is mirrored."""

from sidecar.routing.table import (
    CallCounts,
    RoutePlan,
    RouteTable,
    ShadowLane,
    sample_bucket,
    sampled_lanes,
)

__all__ = ["CallCounts", "RoutePlan", "RouteTable", "ShadowLane", "sample_bucket", "sampled_lanes"]
