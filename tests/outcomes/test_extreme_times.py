"""Issue 14.10 (sibling): extreme outcome times are per-event rejections, never a failure."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from sidecar._proto.shadowcar.v1 import feedback_pb2 as pb
from sidecar.outcomes import MemoryOutcomeSink, OutcomeIngest
from tests.outcomes.conftest import StartFeedback


async def test_extreme_outcome_times_are_rejections(start_feedback: StartFeedback) -> None:
    """Issue 14.10 (sibling: outcome ts): huge, negative, non-finite and far-zone times are
    per-event rejections over both transports' core, never a failed batch."""
    sink = MemoryOutcomeSink()
    ingest = OutcomeIngest(sink)
    events = [{"event_id": str(i), "unit_id": "u", "metric": "m", "value": 1, "ts": ts}
              for i, ts in enumerate([1e300, -1e300, 10**400, "9999-12-31T23:59:59-14:00",
                                      "0001-01-01T00:00:00+14:00", "+275760-09-13"])]
    result = ingest.ingest(events)
    assert result.accepted == 0 and len(result.rejected) == len(events)
    stub = await start_feedback(ingest)
    answer = await stub.RecordOutcomes(pb.RecordOutcomesRequest(events=[
        pb.OutcomeEvent(event_id="g", unit_id="u", metric="m",
                        ts=Timestamp(seconds=2**63 - 1, nanos=999_999_999)),
        pb.OutcomeEvent(event_id="h", unit_id="u", metric="m", ts=Timestamp(seconds=-(2**63))),
    ]))
    assert answer.accepted == 0 and len(answer.rejected) == 2 and sink.rows == []
