"""The replica noise floor: how far a second copy of the primary model drifts from it.

A shadow marked ``replica: true`` in the config runs a model again; its divergence from
the backend it copies is the noise level a candidate's divergence is measured against. A
replica is compared only with that backend (``replica_of``, else the backend recorded with
the same version, else the route's primary), never with whichever backend served.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from analysis.load import relation_columns

__all__ = [
    "NOISE_METRICS", "ReplicaRule", "compare_with_floor", "replica_backends", "replica_rule",
]

#: Metrics compared with the noise floor; for each, larger means more divergent.
NOISE_METRICS = (
    "abs_mean_diff", "mae", "rmse", "max_abs", "out_of_tolerance", "disagreement",
    "js_divergence", "psi", "ks_stat", "wasserstein",
)


def newest_route_configs(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """Each route's settings (by match) from the newest ``configs`` row naming the route."""
    if "config_json" not in relation_columns(con, "configs"):
        return {}
    rows = con.execute("SELECT config_json FROM configs ORDER BY ts DESC NULLS LAST").fetchall()
    return routes_by_match(text for (text,) in rows)


def routes_by_match(texts: Iterable[object]) -> dict[str, dict[str, Any]]:
    """Each route's settings (by match) from the first of ``texts`` (config JSON, newest
    first) naming the route; a text that is not JSON is passed over."""
    found: dict[str, dict[str, Any]] = {}
    for text in texts:
        try:
            config = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            continue
        routes = config.get("routes") if isinstance(config, dict) else None
        for route in routes or []:
            match = route.get("match") if isinstance(route, dict) else None
            if isinstance(match, str) and match not in found:
                found[match] = route
    return found


def replica_backends(
    con: duckdb.DuckDBPyConnection, routes: dict[str, dict[str, Any]] | None = None
) -> dict[str, set[str]]:
    """Replica shadow backends per route (from :func:`newest_route_configs`, or ``routes``)."""
    if routes is None:
        routes = newest_route_configs(con)
    return {
        match: {str(s.get("backend")) for s in route.get("shadows") or []
                if isinstance(s, dict) and s.get("replica") is True}
        for match, route in routes.items()
    }


@dataclass(frozen=True)
class ReplicaRule:
    """Which backend each replica shadow copies, per route (DESIGN section 6: a pair)."""

    #: route -> replica backend -> its ``replica_of`` (None: not configured)
    replicas: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: route -> the route's configured primary backend
    primaries: dict[str, str | None] = field(default_factory=dict)
    #: backend -> version recorded in calls
    versions: dict[str, str] = field(default_factory=dict)

    def is_replica(self, route: str, backend: str) -> bool:
        return backend in self.replicas.get(route, {})

    def copies(self, route: str, replica: str) -> set[str]:
        """The backends this replica may be compared with."""
        named = self.replicas.get(route, {}).get(replica)
        if named:
            return {named}
        version = self.versions.get(replica)
        same = {b for b, v in self.versions.items() if version is not None and v == version
                and b != replica}
        if same:
            return same
        primary = self.primaries.get(route)
        return {primary} if primary else set()

    def pairs(self, route: str, primary: str | None, shadow: str) -> bool:
        """False for a replica shadow against a backend it does not copy."""
        if not self.is_replica(route, shadow):
            return True
        return primary in self.copies(route, shadow)

    def rule_text(self, route: str, replica: str) -> str:
        named = self.replicas.get(route, {}).get(replica)
        if named:
            return f"replica_of {named}"
        if self.versions.get(replica) and any(
                v == self.versions[replica] for b, v in self.versions.items() if b != replica):
            return f"same version {self.versions[replica]}"
        return "the route's primary"


def replica_rule(
    con: duckdb.DuckDBPyConnection, where: str = "TRUE",
    routes: dict[str, dict[str, Any]] | None = None,
) -> ReplicaRule:
    """Each route's replicas and what they copy, from the newest configs and the recorded
    backend versions of the calls matching ``where``."""
    if routes is None:
        routes = newest_route_configs(con)
    replicas = {
        match: {str(s.get("backend")): (str(s["replica_of"]) if s.get("replica_of") else None)
                for s in route.get("shadows") or []
                if isinstance(s, dict) and s.get("replica") is True}
        for match, route in routes.items()
    }
    primaries = {match: (str(route["primary"]) if route.get("primary") else None)
                 for match, route in routes.items()}
    versions: dict[str, str] = {}
    if "backend_version" in relation_columns(con, "calls"):
        rows = con.execute(
            f"SELECT backend, any_value(backend_version) FROM calls WHERE {where} "
            "AND backend IS NOT NULL AND backend_version IS NOT NULL GROUP BY 1"
        ).fetchall()
        versions = {str(b): str(v) for b, v in rows}
    return ReplicaRule(replicas, primaries, versions)


def compare_with_floor(
    candidate: Mapping[str, float | None],
    replicas: Sequence[tuple[str, Mapping[str, float | None]]],
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The floor (per metric, the largest replica value) and the metrics the candidate exceeds.

    ``replicas`` holds (backend, metrics) for every replica pair of the same route and primary.
    """
    floor: dict[str, Any] = {"backends": [name for name, _ in replicas]}
    flags: list[str] = []
    for metric in NOISE_METRICS:
        values = [v for v in (m.get(metric) for _, m in replicas) if v is not None]
        level = max(values) if values else None
        floor[metric] = level
        value = candidate.get(metric)
        if value is not None and level is not None and value > level:
            flags.append(metric)
    return floor, tuple(flags)
