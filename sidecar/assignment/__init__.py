"""Assignment: units hashed to A/B variants and canary shares, reproducibly."""

from sidecar.assignment.assigner import Decision, ExperimentPlan, RouteAssigner
from sidecar.assignment.hashing import BUCKETS, bucket
from sidecar.assignment.units import UnitKey

__all__ = ["BUCKETS", "Decision", "ExperimentPlan", "RouteAssigner", "UnitKey", "bucket"]
