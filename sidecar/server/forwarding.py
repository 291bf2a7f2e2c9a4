"""The forwarding core: one unary call through the sidecar, transport-free.

Bytes in, bytes out: the request is never parsed. The serving backend's answer, status and
metadata come back unchanged; shadows start beside the primary and are never awaited.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass



from sidecar.backends import CallOutcome, Metadata
from sidecar.mirror import Mirror
from sidecar.routing import RoutePlan, RouteTable, sample_bucket
from sidecar.routing.table import BUCKETS
from sidecar.sink import CallRecord, DuckDBSink, RequestRecord

__all__ = ["HOP_BY_HOP", "Dispatch", "forward_metadata", "new_request_id"]

#: Metadata that belongs to one HTTP/2 hop (or to gRPC itself) and is never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
        "te", "host", "content-type", "content-length", "user-agent", "grpc-timeout",
        "grpc-encoding", "grpc-accept-encoding", "grpc-status", "grpc-message",
        "grpc-status-details-bin", "grpc-previous-rpc-attempts", "grpc-retry-pushback-ms",
    }
)
REQUEST_ID = "x-request-id"


def new_request_id() -> str:
    return os.urandom(16).hex()


def forward_metadata(incoming: Metadata) -> tuple[Metadata, str]:
    """Metadata to forward (hop-by-hop keys removed) and the request id (honoured or new)."""
    out: list[tuple[str, str | bytes]] = []
    request_id = None
    for key, value in incoming:
        if key in HOP_BY_HOP or key[0] == ":":
            continue
        if key == REQUEST_ID and isinstance(value, str) and value:
            if request_id is not None:
                continue
            request_id = value[:128]
        out.append((key, value))
    if request_id is None:
        request_id = new_request_id()
        out.append((REQUEST_ID, request_id))
    return tuple(out), request_id


def reply_metadata(md: Metadata) -> Metadata:
    """A backend's metadata as it may be sent on to the caller."""
    return tuple(
        (k, v) for k, v in md if k not in HOP_BY_HOP and k != REQUEST_ID and k[0] != ":"
    )


@dataclass(slots=True)
class Answer:
    """What the caller gets: the serving backend's outcome and the request id."""

    outcome: CallOutcome
    request_id: str


class Dispatch:
    """The sidecar's behaviour for one config version: routes plus where records go."""

    def __init__(
        self, routes: RouteTable, version: str, sink: DuckDBSink, mirror: Mirror
    ) -> None:
        self.routes = routes
        self.version = version
        self._sink = sink
        self._mirror = mirror

    async def forward(
        self,
        plan: RoutePlan,
        method: str,
        request: bytes,
        incoming: Metadata,
        time_remaining: float | None,
    ) -> Answer:
        """Serve one unary call from ``plan``'s primary and mirror it."""
        arrived = time.time()
        t0 = time.perf_counter()
        metadata, request_id = forward_metadata(incoming)
        timeout = plan.timeout_s
        if time_remaining is not None and time_remaining < timeout:
            timeout = max(time_remaining, 0.0005)
        plan.requests += 1
        if plan.shadows:
            bucket = 0
            if any(lane.threshold < BUCKETS for lane in plan.shadows):
                bucket = sample_bucket(request_id)
            self._mirror.start(plan, method, request, metadata, request_id, bucket, self.version)
        primary = plan.primary
        status = "CANCELLED"
        try:
            outcome = await primary.call(method, request, timeout=timeout, metadata=metadata)
            status = outcome.code.name
        finally:
            # Recorded even when the caller goes away mid-call (status CANCELLED).
            self._sink.record_request(
                RequestRecord(
                    request_id, arrived, plan.match, method, None, None, None, False,
                    self.version, None, None, status, (time.perf_counter() - t0) * 1000,
                    request, plan.decoding,
                )
            )
        if not outcome.ok:
            plan.errors[status] = plan.errors.get(status, 0) + 1
        self._sink.record_call(
            CallRecord(
                request_id, outcome.started, plan.match, method, primary.name, primary.version,
                "primary", True, status, outcome.latency_ms, len(request), outcome.response,
                outcome.details, self.version, plan.decoding,
            )
        )
        return Answer(outcome, request_id)



