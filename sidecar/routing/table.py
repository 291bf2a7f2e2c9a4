"""Routes: which backend serves a method and which shadows it is mirrored to.

A :class:`RouteTable` is built once per config version, each plan by :func:`build_plan`,
frozen; lookups are dict hits. Live counters are not here: :mod:`sidecar.routing.counters`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.assignment import RouteAssigner, UnitKey
from sidecar.backends import Backend
from sidecar.canary import CanaryController
from sidecar.config import Config, MirrorShadowConfig, RouteConfig
from sidecar.config.models import ReplyPlacement
from sidecar.routing.counters import LaneCounters, LiveCounters
from sidecar.sink import Decoding
from sidecar.sink.instructions import decoding_for

__all__ = [
    "RoutePlan", "RouteTable", "ShadowLane", "build_plan", "sample_bucket", "sampled_lanes",
]

BUCKETS = 10_000
DEFAULT_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


def sample_bucket(request_id: str) -> int:
    """The request's mirror bucket in [0, 10000): CRC-32 (zlib) of its id modulo 10000.

    Unsalted on purpose: every shadow at the same percentage sees the same requests, so
    pairs line up across shadows (and with a replica's noise floor)."""
    return zlib.crc32(request_id.encode()) % BUCKETS


@dataclass(frozen=True, eq=False, slots=True)
class ShadowLane:
    """One shadow of one route (its live counters: :class:`LiveCounters`)."""

    backend: Backend
    config: MirrorShadowConfig
    threshold: int
    timeout_s: float
    #: Set on the implicit lane that mirrors stable traffic to a canary's candidate.
    canary: CanaryController | None = None

    @property
    def active(self) -> bool:
        """A canary's mirror lane stops once the canary has ended."""
        return self.canary is None or self.canary.state.state in (
            "running", "paused", "awaiting_approval"
        )


@dataclass(frozen=True, eq=False, slots=True)
class RoutePlan:
    """Everything the hot path needs for one route, prebuilt by :func:`build_plan` and never
    changed after (its live counters: :class:`LiveCounters`)."""

    config: RouteConfig
    primary: Backend
    shadows: tuple[ShadowLane, ...]
    timeout_s: float
    decoding: Decoding
    backends: dict[str, Backend] = field(default_factory=dict)
    assigner: RouteAssigner | None = None
    canary: CanaryController | None = None
    fallback_backend: Backend | None = None
    fallback_static: bytes | None = None
    fallback_timeout_s: float = 0.0
    #: Serving statuses that send a call to the fallback (empty: no fallback).
    fallback_codes: frozenset[str] = frozenset()
    #: Statuses that count as the backend's failure for its circuit breaker.
    failure_codes: frozenset[str] = DEFAULT_FAILURES
    margin_s: float = 0.005
    #: The contract enforced on the hot path (mode enforce), else None.
    enforce: Any = None
    #: Some shadow samples less than 100 %: only then is a request's bucket computed.
    partial_sampling: bool = False
    #: Where x-request-id (and x-experiment, x-variant) go back to the caller.
    reply: ReplyPlacement = "trailers"

    @property
    def match(self) -> str:
        return self.config.match


def sampled_lanes(
    plan: RoutePlan, request_id: str, serving: Backend | None, live: LiveCounters
) -> Iterator[tuple[ShadowLane, LaneCounters]]:
    """The shadow lanes of ``plan`` that sample this request, each counted as sampled;
    never the backend serving it, nor a canary's mirror lane once the canary has ended."""
    bucket = sample_bucket(request_id) if plan.partial_sampling else 0
    for lane in plan.shadows:
        if bucket >= lane.threshold or lane.backend is serving or not lane.active:
            continue
        counters = live.lane(plan.config.match, lane.backend.name)
        counters.sampled += 1
        yield lane, counters


def _lanes(
    route: RouteConfig, backends: dict[str, Backend], canary: CanaryController | None
) -> tuple[ShadowLane, ...]:
    lanes = [
        ShadowLane(
            backend=backends[s.backend],
            config=s,
            threshold=round(s.sample_percent * BUCKETS / 100),
            timeout_s=s.timeout_ms / 1000,
        )
        for s in route.shadows
    ]
    cc = route.canary
    if canary is not None and cc is not None and cc.mirror_stable:
        if all(lane.backend.name != cc.candidate for lane in lanes):
            lanes.append(
                ShadowLane(
                    backend=backends[cc.candidate],
                    config=MirrorShadowConfig(
                        backend=cc.candidate, sample_percent=100,
                        timeout_ms=cc.mirror_timeout_ms, max_in_flight=cc.mirror_max_in_flight,
                    ),
                    threshold=BUCKETS,
                    timeout_s=cc.mirror_timeout_ms / 1000,
                    canary=canary,
                )
            )
    return tuple(lanes)


def build_plan(
    route: RouteConfig,
    config: Config,
    backends: dict[str, Backend],
    *,
    decoding: Decoding,
    canary: CanaryController | None = None,
    static_fallback: bytes | None = None,
) -> RoutePlan:
    """The one place a route's plan is made (``decoding``: the sink's instructions)."""
    lanes = _lanes(route, backends, canary)
    experiments = route.all_experiments
    fb = route.fallback
    enforce = route.contract is not None and route.contract.mode == "enforce"
    return RoutePlan(
        config=route,
        primary=backends[route.primary],
        shadows=lanes,
        backends=backends,
        assigner=(
            RouteAssigner(route.primary, experiments, UnitKey.of(route.unit), config.assignment)
            if experiments else None
        ),
        canary=canary,
        margin_s=route.deadline_margin_ms / 1000,
        timeout_s=route.timeout_ms / 1000,
        decoding=decoding,
        enforce=decoding.contract if enforce else None,
        fallback_codes=frozenset(fb.codes) if fb is not None else frozenset(),
        failure_codes=frozenset(fb.codes) if fb is not None else DEFAULT_FAILURES,
        fallback_timeout_s=fb.timeout_ms / 1000 if fb is not None else 0.0,
        fallback_backend=(
            backends[fb.backend] if fb is not None and fb.backend is not None else None
        ),
        fallback_static=static_fallback if fb is not None and fb.backend is None else None,
        partial_sampling=any(lane.threshold < BUCKETS for lane in lanes),
        reply=route.reply_request_id,
    )


class RouteTable:
    """Method -> route, by exact method, then service wildcard, then '*'. A method with
    per-model routes (``match: {method, model}``) is routed per call by the model its
    request names (:meth:`for_model`), else to its plain exact route (docs/oip.md)."""

    def __init__(
        self,
        config: Config,
        backends: dict[str, Backend],
        canaries: dict[str, CanaryController] | None = None,
        static_fallbacks: dict[str, bytes] | None = None,
        redaction_keys: dict[str, bytes] | None = None,
        contracts: dict[str, Any] | None = None,
        codecs: dict[str, Any] | None = None,
    ) -> None:
        self._exact: dict[str, RoutePlan] = {}
        self._service: dict[str, RoutePlan] = {}
        self._default: RoutePlan | None = None
        #: method -> model -> plan, for per-model routes
        self._models: dict[str, dict[str, RoutePlan]] = {}
        canaries = canaries or {}
        plans = []
        for route in config.routes:
            plan = build_plan(
                route, config, backends, canary=canaries.get(route.match),
                static_fallback=(static_fallbacks or {}).get(route.match),
                decoding=decoding_for(route, config, codecs=codecs,
                                      redaction_keys=redaction_keys, contracts=contracts),
            )
            plans.append(plan)
            if route.model is not None:
                self._models.setdefault(route.method, {})[route.model] = plan
            elif route.match == "*":
                self._default = plan
            elif route.match.endswith("/*"):
                self._service[route.match[:-1]] = plan
            else:
                self._exact[route.match] = plan
        self.plans: tuple[RoutePlan, ...] = tuple(plans)

    def per_model(self, method: str) -> bool:
        """Some route of ``method`` takes one model's calls: its requests name the route."""
        return method in self._models

    def for_model(self, method: str, model: str | None) -> RoutePlan | None:
        """The route of ``model``'s calls of ``method``, else the method's plain exact route
        (the default; also for a request whose model cannot be read, ``model`` None)."""
        plans = self._models.get(method)
        plan = plans.get(model) if plans is not None and model is not None else None
        return plan if plan is not None else self._exact.get(method)

    def match(self, method: str) -> RoutePlan | None:
        """The route for a full method name ``/pkg.Svc/Method``, or None."""
        plan = self._exact.get(method)
        if plan is not None:
            return plan
        cut = method.rfind("/")
        if cut > 0:
            plan = self._service.get(method[: cut + 1])
            if plan is not None:
                return plan
        return self._default
