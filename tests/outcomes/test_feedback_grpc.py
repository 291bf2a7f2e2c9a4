"""``shadowcar.v1.Feedback`` on a real grpc.aio server, called through a real channel."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sidecar._proto.shadowcar.v1 import feedback_pb2 as pb
from sidecar.outcomes import MemoryOutcomeSink, OutcomeIngest
from tests.outcomes.conftest import OpenSink, StartFeedback, stored_outcomes

NOW = 1_700_000_000.0


def clock() -> float:
    return NOW


async def test_a_mixed_batch_is_translated_both_ways(start_feedback: StartFeedback) -> None:
    sink = MemoryOutcomeSink()
    stub = await start_feedback(OutcomeIngest(sink, clock=clock))
    response = await stub.RecordOutcomes(
        pb.RecordOutcomesRequest(
            events=[
                pb.OutcomeEvent(
                    event_id="a",
                    unit_id="u1",
                    metric="click",
                    value=1,
                    ts=Timestamp(seconds=1_699_999_000, nanos=500_000_000),
                ),
                # Empty strings are absent: only request_id identifies this one; no ts.
                pb.OutcomeEvent(event_id="b", unit_id="", request_id="r2", metric="ctr"),
                pb.OutcomeEvent(unit_id="u3", metric="click", value=1),
                pb.OutcomeEvent(event_id="d", metric="click", value=float("nan")),
                pb.OutcomeEvent(event_id="a", unit_id="u1", metric="click", value=2),
                pb.OutcomeEvent(
                    event_id="f", unit_id="u", metric="m", ts=Timestamp(seconds=int(NOW) + 3600)
                ),
            ]
        )
    )
    assert response.accepted == 2
    assert list(response.duplicates) == ["a"]
    assert response.dropped == 0
    assert [(r.index, r.event_id) for r in response.rejected] == [(2, ""), (3, "d"), (5, "f")]
    assert response.rejected[0].reason == "event_id: required"
    assert response.rejected[1].reason == (
        "unit_id, request_id: at least one is required; value: must be a finite number"
    )
    assert "ts: 2023-11-14T23:13:20Z is more than 300s in the future" in response.rejected[2].reason
    a, b = sink.rows
    assert (a.event_id, a.unit_id, a.request_id, a.value, a.ts) == (
        "a",
        "u1",
        None,
        1.0,
        1_699_999_000.5,
    )
    assert (b.event_id, b.unit_id, b.request_id, b.value, b.ts) == ("b", None, "r2", 0.0, NOW)


async def test_an_oversized_batch_is_invalid_argument(start_feedback: StartFeedback) -> None:
    sink = MemoryOutcomeSink()
    stub = await start_feedback(OutcomeIngest(sink, max_events=2))
    events = [pb.OutcomeEvent(event_id=str(i), unit_id="u", metric="m") for i in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordOutcomes(pb.RecordOutcomesRequest(events=events))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 2 events, got 3" in (info.value.details() or "")
    assert sink.rows == []
    empty = await stub.RecordOutcomes(pb.RecordOutcomesRequest())
    assert empty == pb.RecordOutcomesResponse()


async def test_a_full_sink_is_reported_as_dropped(start_feedback: StartFeedback) -> None:
    stub = await start_feedback(OutcomeIngest(MemoryOutcomeSink(capacity=1)))
    events = [pb.OutcomeEvent(event_id=i, unit_id="u", metric="m") for i in ("a", "b")]
    response = await stub.RecordOutcomes(pb.RecordOutcomesRequest(events=events))
    assert (response.accepted, response.dropped) == (1, 1)


async def test_outcomes_sent_over_grpc_land_in_duckdb(
    start_feedback: StartFeedback, open_sink: OpenSink, tmp_path: Path
) -> None:
    db = tmp_path / "g.duckdb"
    sink = open_sink(db)
    stub = await start_feedback(OutcomeIngest(sink))
    request = pb.RecordOutcomesRequest(
        events=[
            pb.OutcomeEvent(
                event_id=f"e{i}",
                unit_id=f"u{i}",
                metric="label",
                value=i,
                ts=Timestamp(seconds=1_700_000_000 + i),
            )
            for i in range(5)
        ]
    )
    assert (await stub.RecordOutcomes(request)).accepted == 5
    assert list((await stub.RecordOutcomes(request)).duplicates) == [f"e{i}" for i in range(5)]
    await sink.aclose()
    assert stored_outcomes(db) == [
        (f"e{i}", f"u{i}", None, "label", float(i), 1_700_000_000.0 + i) for i in range(5)
    ]
