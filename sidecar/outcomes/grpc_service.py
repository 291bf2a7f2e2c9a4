"""The gRPC transport of outcome ingestion: ``shadowcar.v1.Feedback`` over :class:`OutcomeIngest`.

It only translates protobuf messages to the core's event mappings and its result back, after
the same credential rule as ``POST /v1/outcomes`` (:class:`FeedbackAuth`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from sidecar._proto.shadowcar.v1 import feedback_pb2, feedback_pb2_grpc
from sidecar.outcomes.ingest import BatchTooLarge, IngestResult, OutcomeIngest

__all__ = ["SERVICE_NAME", "FeedbackAuth", "FeedbackServicer", "add_feedback_service"]

#: Full name of the service, as reflection and health checks know it.
SERVICE_NAME: str = feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name

_STRING_FIELDS = ("event_id", "unit_id", "request_id", "metric")


def _loopback_peer(peer: str) -> bool:
    """Is a grpc peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:...``) on
    this host?"""
    kind, _, address = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class FeedbackAuth:
    """Who may record outcomes over gRPC: the admin API's rule for ``POST /v1/outcomes``.

    With a token (``admin.token`` or env, read per call) every call needs metadata
    ``authorization: Bearer TOKEN``. Without one, only callers on this host may record, as
    only they reach a loopback admin API, unless ``open_without_token`` (the config's
    ``admin.allow_unauthenticated``) says the operator accepts an open door.
    """

    token: Callable[[], str | None] = lambda: None
    open_without_token: bool = False

    def refusal(self, metadata: Sequence[tuple[str, Any]], peer: str) -> str | None:
        """Why the call is refused (UNAUTHENTICATED), or None."""
        token = self.token()
        if token is None:
            if self.open_without_token or _loopback_peer(peer):
                return None
            return ("no admin token is configured, so outcomes are accepted from this host "
                    "only: set admin.token (or SHADOWCAR_ADMIN_TOKEN) and send it as "
                    "'authorization: Bearer TOKEN'")
        given = next((v for k, v in metadata if k == "authorization"), "")
        if isinstance(given, bytes):
            given = given.decode("utf-8", "replace")
        scheme, _, value = str(given).partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode("utf-8", "surrogateescape"), token.encode()
        ):
            return "a bearer token is required: metadata 'authorization: Bearer TOKEN'"
        return None


def _event(message: feedback_pb2.OutcomeEvent) -> dict[str, object]:
    """The core's event mapping: an empty string and an unset ``ts`` mean "absent"."""
    event: dict[str, object] = {
        name: getattr(message, name) for name in _STRING_FIELDS if getattr(message, name)
    }
    # proto3 doubles have no presence: an unset value is 0.0, a valid outcome.
    event["value"] = message.value
    if message.HasField("ts"):
        event["ts"] = message.ts.seconds + message.ts.nanos / 1e9
    return event


def _response(result: IngestResult) -> feedback_pb2.RecordOutcomesResponse:
    return feedback_pb2.RecordOutcomesResponse(
        accepted=result.accepted,
        duplicates=list(result.duplicates),
        rejected=[
            feedback_pb2.RecordOutcomesResponse.Rejection(
                index=r.index, event_id=r.event_id or "", reason=r.reason
            )
            for r in result.rejected
        ],
        dropped=result.dropped,
    )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServicer):
    """``shadowcar.v1.Feedback`` for a ``grpc.aio`` server.

    A batch in which every event is rejected still answers OK: the per-event reasons are in
    the response. Only a batch over the size limit fails, with INVALID_ARGUMENT.
    """

    def __init__(self, ingest: OutcomeIngest, auth: FeedbackAuth | None = None) -> None:
        self._ingest = ingest
        self._auth = auth or FeedbackAuth()

    async def RecordOutcomes(
        self,
        request: feedback_pb2.RecordOutcomesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> feedback_pb2.RecordOutcomesResponse:
        refusal = self._auth.refusal(context.invocation_metadata() or (), context.peer())
        if refusal is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
            raise AssertionError("context.abort returned")  # abort always raises
        try:
            result = self._ingest.ingest([_event(e) for e in request.events])
        except BatchTooLarge as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("context.abort returned") from exc  # abort always raises
        return _response(result)


def add_feedback_service(
    server: grpc.aio.Server, ingest: OutcomeIngest, auth: FeedbackAuth | None = None
) -> str:
    """Serve ``shadowcar.v1.Feedback`` on ``server``; return its full name for reflection.

    ``auth`` defaults to the safe rule with no token: callers on this host only.
    """
    feedback_pb2_grpc.add_FeedbackServicer_to_server(FeedbackServicer(ingest, auth), server)
    return SERVICE_NAME
