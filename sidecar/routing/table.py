"""Routes: which backend serves a method and which shadows it is mirrored to.

A :class:`RouteTable` is built once per config version; lookups are dict hits.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.assignment import RouteAssigner, UnitKey
from sidecar.backends import Backend
from sidecar.canary import CanaryController
from sidecar.codecs import codec_for
from sidecar.config import Config, MirrorShadowConfig, RouteConfig
from sidecar.sink import Decoding
from sidecar.sink.redaction import Redactor

__all__ = ["CallCounts", "RoutePlan", "RouteTable", "ShadowLane", "sample_bucket", "sampled_lanes"]

BUCKETS = 10_000
DEFAULT_FAILURES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})

#: (route, backend, role, status) -> calls; plain ints bumped on the hot path.
CallCounts = dict[tuple[str, str, str, str], int]


def sample_bucket(request_id: str) -> int:
    """The request's mirror bucket in [0, 10000): CRC-32 (zlib) of its id modulo 10000.

    Unsalted on purpose: every shadow at the same percentage sees the same requests, so
    pairs line up across shadows (and with a replica's noise floor)."""
    return zlib.crc32(request_id.encode()) % BUCKETS


@dataclass(eq=False)
class ShadowLane:
    """One shadow of one route, with its live in-flight count and counters."""

    backend: Backend
    config: MirrorShadowConfig
    threshold: int
    timeout_s: float
    in_flight: int = 0
    sampled: int = 0
    sent: int = 0
    dropped: int = 0
    errored: int = 0
    breaker_skipped: int = 0
    #: Set on the implicit lane that mirrors stable traffic to a canary's candidate.
    canary: CanaryController | None = None

    @property
    def active(self) -> bool:
        """A canary's mirror lane stops once the canary has ended."""
        return self.canary is None or self.canary.state.state in (
            "running", "paused", "awaiting_approval"
        )

    @property
    def answered(self) -> int:
        """Sent copies the shadow answered OK (sampled = sent + dropped; sent = answered +
        errored + in flight; errored includes copies cancelled at shutdown)."""
        return self.sent - self.errored - self.in_flight

    def counters(self) -> dict[str, int]:
        return {
            "sampled": self.sampled,
            "sent": self.sent,
            "dropped": self.dropped,
            "errored": self.errored,
            "answered": self.answered,
            "breaker_skipped": self.breaker_skipped,
            "in_flight": self.in_flight,
        }


@dataclass(eq=False)
class RoutePlan:
    """Everything the hot path needs for one route, prebuilt."""

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
    contract_refused: int = 0
    requests: int = 0
    in_flight: int = 0
    shed: int = 0
    fallbacks: int = 0
    fallback_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def match(self) -> str:
        return self.config.match

    def __post_init__(self) -> None:
        #: Some shadow samples less than 100 %: only then is a request's bucket computed.
        self.partial_sampling = any(lane.threshold < BUCKETS for lane in self.shadows)


def sampled_lanes(
    plan: RoutePlan, request_id: str, serving: Backend | None
) -> Iterator[ShadowLane]:
    """The shadow lanes of ``plan`` that sample this request, each counted as sampled;
    never the backend serving it, nor a canary's mirror lane once the canary has ended."""
    bucket = sample_bucket(request_id) if plan.partial_sampling else 0
    for lane in plan.shadows:
        if bucket >= lane.threshold or lane.backend is serving or not lane.active:
            continue
        lane.sampled += 1
        yield lane


def _codec(route: RouteConfig, built: dict[str, Any] | None) -> Any:
    """raw: nothing to decode (the writer skips the work); oip: the tensor codec;
    descriptor/reflection: the JSON codec built at load or start (None if it failed)."""
    if route.codec == "raw":
        return None
    if route.codec == "oip":
        return codec_for("oip")
    return (built or {}).get(route.match)


def _redactor(route: RouteConfig, keys: dict[str, bytes] | None) -> Redactor | None:
    red = route.redact
    if red is None:
        return None
    return Redactor(
        inputs=frozenset(red.inputs), fields=red.fields, unit=red.unit, mode=red.mode,
        key=(keys or {}).get(route.match),
    )


class RouteTable:
    """Method -> route, by exact method, then service wildcard, then '*'."""

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
        self.plans: list[RoutePlan] = []
        canaries = canaries or {}
        for route in config.routes:
            lanes = [
                ShadowLane(
                    backend=backends[s.backend],
                    config=s,
                    threshold=round(s.sample_percent * BUCKETS / 100),
                    timeout_s=s.timeout_ms / 1000,
                )
                for s in route.shadows
            ]
            canary = canaries.get(route.match)
            if canary is not None and route.canary is not None and route.canary.mirror_stable:
                cc = route.canary
                if all(lane.backend.name != cc.candidate for lane in lanes):
                    lanes.append(
                        ShadowLane(
                            backend=backends[cc.candidate],
                            config=MirrorShadowConfig(
                                backend=cc.candidate, sample_percent=100,
                                timeout_ms=cc.mirror_timeout_ms,
                                max_in_flight=cc.mirror_max_in_flight,
                            ),
                            threshold=BUCKETS,
                            timeout_s=cc.mirror_timeout_ms / 1000,
                            canary=canary,
                        )
                    )
            experiments = route.all_experiments
            route_unit = UnitKey.of(route.unit)
            plan = RoutePlan(
                config=route,
                primary=backends[route.primary],
                shadows=tuple(lanes),
                backends=backends,
                assigner=(
                    RouteAssigner(route.primary, experiments, route_unit, config.assignment)
                    if experiments else None
                ),
                canary=canary,
                margin_s=route.deadline_margin_ms / 1000,
                timeout_s=route.timeout_ms / 1000,
                decoding=Decoding(
                    codec=_codec(route, codecs),
                    compare_fields=route.compare_fields,
                    compare_output=route.compare_output,
                    score_index=route.score_index,
                    # A redacted route never keeps raw bytes: they would hold the secret.
                    record_bytes=config.storage.record_bytes and route.redact is None,
                    redactor=_redactor(route, redaction_keys),
                    contract=(contracts or {}).get(route.match),
                    plain=(route.codec == "raw" and route.redact is None
                           and route.contract is None and not config.storage.record_bytes),
                ),
            )
            if route.contract is not None and route.contract.mode == "enforce":
                plan.enforce = plan.decoding.contract
            fb = route.fallback
            if fb is not None:
                plan.fallback_codes = frozenset(fb.codes)
                plan.failure_codes = frozenset(fb.codes)
                plan.fallback_timeout_s = fb.timeout_ms / 1000
                if fb.backend is not None:
                    plan.fallback_backend = backends[fb.backend]
                else:
                    plan.fallback_static = (static_fallbacks or {})[route.match]
            self.plans.append(plan)
            if route.match == "*":
                self._default = plan
            elif route.match.endswith("/*"):
                self._service[route.match[:-1]] = plan
            else:
                self._exact[route.match] = plan

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
