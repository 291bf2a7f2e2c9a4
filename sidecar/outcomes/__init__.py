"""Outcome feedback: later observed results (a click, a label) for a unit or a request.

One core (:class:`OutcomeIngest`) validates and stores batches; ``grpc_service`` and ``http``
are thin transports over it.
"""

from sidecar.outcomes.grpc_service import FeedbackServicer, add_feedback_service
from sidecar.outcomes.http import MAX_BODY_BYTES, handle_post_outcomes
from sidecar.outcomes.ingest import (
    EVENT_FIELDS,
    BatchTooLarge,
    IngestResult,
    MemoryOutcomeSink,
    OutcomeIngest,
    OutcomeSink,
    Rejection,
)

__all__ = [
    "EVENT_FIELDS",
    "MAX_BODY_BYTES",
    "BatchTooLarge",
    "FeedbackServicer",
    "IngestResult",
    "MemoryOutcomeSink",
    "OutcomeIngest",
    "OutcomeSink",
    "Rejection",
    "add_feedback_service",
    "handle_post_outcomes",
]
