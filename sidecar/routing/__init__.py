"""Routing: from a gRPC method to the plan of who serves it and who is mirrored."""

from sidecar.routing.counters import CallCounts, LaneCounters, LiveCounters, RouteCounters
from sidecar.routing.table import (
    RoutePlan,
    RouteTable,
    ShadowLane,
    build_plan,
    sample_bucket,
    sampled_lanes,
)

__all__ = [
    "CallCounts",
    "LaneCounters",
    "LiveCounters",
    "RouteCounters",
    "RoutePlan",
    "RouteTable",
    "ShadowLane",
    "build_plan",
    "sample_bucket",
    "sampled_lanes",
]
