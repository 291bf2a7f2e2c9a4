"""Outcome feedback: later observed results (a click, a label) for a unit or a request.

One core (:class:`OutcomeIngest`) validates and stores batches; ``grpc_service`` and ``http``
are thin transports over it. The HTTP one (aiohttp) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar._lazy import lazy_exports
from sidecar.outcomes.grpc_service import FeedbackAuth, FeedbackServicer, add_feedback_service
from sidecar.outcomes.ingest import (
    EVENT_FIELDS,
    BatchTooLarge,
    IngestResult,
    MemoryOutcomeSink,
    OutcomeIngest,
    OutcomeSink,
    Rejection,
)

if TYPE_CHECKING:
    from sidecar.outcomes.http import MAX_BODY_BYTES, handle_post_outcomes

__all__ = [
    "EVENT_FIELDS",
    "MAX_BODY_BYTES",
    "BatchTooLarge",
    "FeedbackAuth",
    "FeedbackServicer",
    "IngestResult",
    "MemoryOutcomeSink",
    "OutcomeIngest",
    "OutcomeSink",
    "Rejection",
    "add_feedback_service",
    "handle_post_outcomes",
]

__getattr__, __dir__ = lazy_exports(
    __name__, globals(), dict.fromkeys(("MAX_BODY_BYTES", "handle_post_outcomes"),
                                       "sidecar.outcomes.http")
)
