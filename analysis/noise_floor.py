"""The replica noise floor: how far a second copy of the primary model drifts from it.

A shadow marked ``replica: true`` in the config runs the primary's model again; its
divergence is the noise level a candidate's divergence is measured against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb

from analysis.load import relation_columns

__all__ = ["NOISE_METRICS", "compare_with_floor", "replica_backends"]

#: Metrics compared with the noise floor; for each, larger means more divergent.
NOISE_METRICS = (
    "abs_mean_diff", "mae", "rmse", "max_abs", "out_of_tolerance", "disagreement",
    "js_divergence", "psi", "ks_stat", "wasserstein",
)


def newest_route_configs(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """Each route's settings (by match) from the newest ``configs`` row naming the route."""
    if "config_json" not in relation_columns(con, "configs"):
        return {}
    found: dict[str, dict[str, Any]] = {}
    rows = con.execute("SELECT config_json FROM configs ORDER BY ts DESC NULLS LAST").fetchall()
    for (text,) in rows:
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
