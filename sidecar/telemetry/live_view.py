"""The live view of a running sidecar, shaped for ``/v1/stats``, the dashboard and the demo.

One vocabulary for a shadow's copies, used by the dashboard, metrics, the demo and reports
(docs/counters.md): ``sampled`` = ``sent`` + ``dropped``; ``sent`` = ``answered`` +
``errored`` + in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.backends import Backend
from sidecar.routing import LiveCounters, RoutePlan
from sidecar.telemetry.backend_errors import BackendErrors
from sidecar.telemetry.live_state import LiveState

__all__ = [
    "backend_views", "configured_roles", "experiments_view", "live_stats", "pair_keys",
    "route_view",
]

RoleKey = tuple[str, str, str]


def live_stats(state: LiveState) -> dict[str, Any]:
    """Live counters and model health for the admin API, dashboard and demo (only what
    the current config has: after a reload, rows of roles no longer configured go)."""
    plans = state.route_plans()
    configured = configured_roles(plans)
    sink = state.sink
    return {
        "config_version": state.loaded.version,
        "draining": state.draining,
        "primaries_ready": state.primaries_ready,
        "routes": [route_view(plan, state.live) for plan in plans],
        "backends": backend_views(state.backends, state.backend_errors),
        "latency": [row for row in state.health.latencies()
                    if (row["route"], row["backend"], row["role"]) in configured],
        "pairs": [row for row in state.health.pairs()
                  if (row["route"], row["primary"], row["shadow"]) in pair_keys(configured)],
        "mirror_in_flight": state.mirror_in_flight,
        "sink": {**sink.stats.as_dict(), "queue_depth": sink.queue_depth},
    }


def experiments_view(state: LiveState) -> list[dict[str, Any]]:
    """Every experiment with its layout and exposures so far."""
    out = []
    assignments = state.live.assignments
    for plan in state.route_plans():
        if plan.assigner is None:
            continue
        for exp in plan.assigner.experiments:
            shares = exp.shares()
            out.append({
                "route": plan.match,
                "name": exp.name,
                "salt": exp.salt,
                "coverage": exp.config.coverage,
                "namespace": exp.config.namespace.model_dump() if exp.config.namespace
                else None,
                "holdout_percent": state.loaded.config.assignment.holdout_percent,
                "variants": [
                    {"name": a.name, "backend": a.backend, "buckets": [a.start, a.end],
                     "share": shares[a.name],
                     "exposed": assignments.get((plan.match, exp.name, a.name), 0)}
                    for a in exp.arms
                ],
            })
    return out


def route_view(plan: RoutePlan, live: LiveCounters) -> dict[str, Any]:
    """One route's live counters, shadows, canary and experiment."""
    counters = live.route(plan.match)
    return {
        "match": plan.match,
        "primary": plan.primary.name,
        "primary_version": plan.primary.version,
        "primary_model": plan.primary.config.model,  # OIP name it is asked for (issue 17)
        "requests": counters.requests,
        "errors": dict(counters.errors),
        "in_flight": counters.in_flight,
        "shed": counters.shed,
        "fallbacks": counters.fallbacks,
        "fallback_failed": counters.fallback_failed,
        "shadows": {
            lane.backend.name: {
                **live.lane(plan.match, lane.backend.name).as_dict(),
                "sample_percent": lane.config.sample_percent,
                "version": lane.backend.version,
                "model": lane.backend.config.model,
                "replica": lane.config.replica,
            }
            for lane in plan.shadows
        },
        "canary": plan.canary.status() if plan.canary is not None else None,
        "experiment": _experiment_view(plan),
    }


def backend_views(
    backends: Mapping[str, Backend], errors: BackendErrors
) -> list[dict[str, Any]]:
    """Every configured backend: its breaker state, recent error rate and last error."""
    seen = errors.snapshot(backends)
    empty = {"calls": 0, "errors": 0, "error_rate": None, "window": 0, "last_error": None}
    out = []
    for name, b in backends.items():
        breaker = b.breaker.snapshot()
        out.append({"name": name, "version": b.version, "model": b.config.model,
                    "target": b.target,
                    "breaker": breaker["state"], "breaker_detail": breaker,
                    **seen.get(name, empty)})
    return out


def breaker_state(backend: Backend) -> str:
    """``closed``, ``open``, ``half_open`` (also an open one whose cooldown is over) or
    ``disabled``: the breaker's own account of itself."""
    return str(backend.breaker.snapshot()["state"])


def configured_roles(plans: Iterable[RoutePlan]) -> set[RoleKey]:
    """(route, backend, role) of every call the routes' current config can make."""
    out: set[RoleKey] = set()
    for plan in plans:
        route = plan.match
        out.add((route, plan.primary.name, "primary"))
        out |= {(route, lane.backend.name, "shadow") for lane in plan.shadows}
        if plan.assigner is not None:
            out |= {(route, arm.backend, "variant")
                    for exp in plan.assigner.experiments for arm in exp.arms}
        if plan.canary is not None:
            out |= {(route, plan.canary.config.stable, "stable"),
                    (route, plan.canary.config.candidate, "canary")}
        if plan.fallback_backend is not None:
            out.add((route, plan.fallback_backend.name, "fallback"))
        elif plan.fallback_static is not None:
            out.add((route, "static", "fallback"))
    return out


def pair_keys(configured: set[RoleKey]) -> set[RoleKey]:
    """(route, serving backend, shadow) couples the configured roles can pair."""
    serving = {(r, b) for r, b, role in configured if role != "shadow"}
    shadows = {(r, b) for r, b, role in configured if role == "shadow"}
    return {(r, p, s) for r, p in serving for r2, s in shadows if r2 == r}


def _experiment_view(plan: RoutePlan) -> dict[str, Any] | None:
    """The first experiment of a route, shaped for the dashboard's split bar."""
    if plan.assigner is None or not plan.assigner.experiments:
        return None
    exp = plan.assigner.experiments[0]
    shares = exp.shares()
    return {
        "name": exp.name,
        "variants": [
            {"name": a.name, "backend": a.backend, "share": shares[a.name]} for a in exp.arms
        ],
    }
