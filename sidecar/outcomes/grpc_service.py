"""The gRPC transport of outcome ingestion: ``shadowcar.v1.Feedback`` over :class:`OutcomeIngest`.

It only translates protobuf messages to the core's event mappings and its result back.
"""

from __future__ import annotations

from typing import Any

import grpc

from sidecar._proto.shadowcar.v1 import feedback_pb2, feedback_pb2_grpc
from sidecar.outcomes.ingest import BatchTooLarge, IngestResult, OutcomeIngest

__all__ = ["SERVICE_NAME", "FeedbackServicer", "add_feedback_service"]

#: Full name of the service, as reflection and health checks know it.
SERVICE_NAME: str = feedback_pb2.DESCRIPTOR.services_by_name["Feedback"].full_name

_STRING_FIELDS = ("event_id", "unit_id", "request_id", "metric")


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

    def __init__(self, ingest: OutcomeIngest) -> None:
        self._ingest = ingest

    async def RecordOutcomes(
        self,
        request: feedback_pb2.RecordOutcomesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> feedback_pb2.RecordOutcomesResponse:
        try:
            result = self._ingest.ingest([_event(e) for e in request.events])
        except BatchTooLarge as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("context.abort returned") from exc  # abort always raises
        return _response(result)


def add_feedback_service(server: grpc.aio.Server, ingest: OutcomeIngest) -> str:
    """Serve ``shadowcar.v1.Feedback`` on ``server``; return its full name for reflection."""
    feedback_pb2_grpc.add_FeedbackServicer_to_server(FeedbackServicer(ingest), server)
    return SERVICE_NAME
