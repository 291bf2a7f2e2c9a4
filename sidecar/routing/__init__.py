"""Routing: from a gRPC method to the plan of who serves it and who is mirrored."""

from sidecar.routing.table import RoutePlan, RouteTable, ShadowLane, sample_bucket

__all__ = ["RoutePlan", "RouteTable", "ShadowLane", "sample_bucket"]
