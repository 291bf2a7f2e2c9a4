"""Who serves a request: holdout, experiment variant, canary share, or the primary.

Built once per config version per route; ``decide`` is called on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.assignment.hashing import BUCKETS, bucket
from sidecar.assignment.units import UnitKey
from sidecar.backends import Metadata
from sidecar.config.experiments import AssignmentConfig, ExperimentConfig

__all__ = ["Arm", "Decision", "ExperimentPlan", "RouteAssigner"]

Role = Literal["primary", "variant", "stable", "canary"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The assignment of one request."""

    backend: str
    role: Role
    unit_id: str | None
    experiment: str | None
    variant: str | None
    exposed: bool
    forced: bool = False


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    backend: str
    start: int
    end: int


class ExperimentPlan:
    """One experiment's bucket layout."""

    def __init__(self, config: ExperimentConfig, route_unit: UnitKey) -> None:
        self.config = config
        self.name = config.name
        self.salt = config.hash_salt
        self.unit = UnitKey.of(config.unit) if config.unit is not None else route_unit
        arms = []
        start = 0.0
        for v in config.variants:
            width = v.weight * config.coverage / 100  # percent of units in use
            arms.append(Arm(v.name, v.backend, round(start * 100), round((start + width) * 100)))
            start += v.weight
        self.arms = tuple(arms)
        self.by_name = {a.name: a for a in self.arms}
        ns = config.namespace
        self.namespace = (ns.name, round(ns.start * 100), round(ns.end * 100)) if ns else None
        self.force_header = config.force_header if config.allow_force else None

    def eligible(self, unit: str) -> bool:
        if self.namespace is None:
            return True
        name, lo, hi = self.namespace
        return lo <= bucket(name, unit) < hi

    def arm_for(self, unit: str) -> Arm | None:
        b = bucket(self.salt, unit)
        for arm in self.arms:
            if arm.start <= b < arm.end:
                return arm
        return None

    def shares(self) -> dict[str, float]:
        return {a.name: (a.end - a.start) / BUCKETS for a in self.arms}


class RouteAssigner:
    """Assignment for one route: experiments (in namespaces) and the holdout."""

    def __init__(
        self,
        primary: str,
        experiments: tuple[ExperimentConfig, ...],
        route_unit: UnitKey,
        assignment: AssignmentConfig,
    ) -> None:
        self.primary = primary
        self.experiments = tuple(ExperimentPlan(e, route_unit) for e in experiments)
        self.holdout = round(assignment.holdout_percent * 100)
        self.holdout_salt = assignment.holdout_salt
        self._not_exposed = Decision(primary, "primary", None, None, None, False)

    def decide(self, metadata: Metadata, request: bytes, request_id: str) -> Decision:
        # Experiments usually share the route's unit key: extract the unit and test the
        # holdout once per distinct key and unit, not once per experiment.
        key: UnitKey | None = None
        unit: str | None = None
        not_held: str | None = None
        for exp in self.experiments:
            if exp.unit is not key:
                key, unit = exp.unit, exp.unit.extract(metadata, request, request_id)
            if unit is None:
                continue
            if self.holdout and unit != not_held:
                if bucket(self.holdout_salt, unit) < self.holdout:
                    return Decision(self.primary, "primary", unit, None, "holdout", False)
                not_held = unit
            if exp.force_header is not None:
                forced = _header(metadata, exp.force_header)
                if forced is not None and forced in exp.by_name:
                    forced_arm = exp.by_name[forced]
                    return Decision(
                        forced_arm.backend, "variant", unit, exp.name, forced_arm.name, True, True
                    )
            if not exp.eligible(unit):
                continue
            arm = exp.arm_for(unit)
            if arm is not None:
                return Decision(arm.backend, "variant", unit, exp.name, arm.name, True)
            return Decision(self.primary, "primary", unit, None, None, False)
        return self._not_exposed


def _header(metadata: Metadata, key: str) -> str | None:
    for k, v in metadata:
        if k == key and isinstance(v, str):
            return v
    return None
