"""Outcomes reach the DuckDB file: good rows stored beside rejections, repeats stored once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.outcomes import OutcomeIngest
from tests.outcomes.conftest import OpenSink, stored_outcomes


def ev(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "unit_id": "u1", "metric": "click", "value": 1.0, **fields}


async def test_good_events_are_stored_and_bad_ones_rejected(
    open_sink: OpenSink, tmp_path: Path
) -> None:
    db = tmp_path / "o.duckdb"
    sink = open_sink(db)
    ingest = OutcomeIngest(sink)
    before = time.time()
    result = ingest.ingest(
        [
            ev("a", ts="2024-05-01T12:00:00Z", value=3),
            ev("b", value="high"),
            ev("c", unit_id=None, request_id="req-7", metric="label:fraud", value=-0.25, ts=1.7e9),
            {"event_id": "d", "unit_id": "u2", "metric": "m"},
            ev("e", unit_id="u9", request_id="req-9"),
        ]
    )
    assert result.accepted == 3
    assert [(r.index, r.event_id) for r in result.rejected] == [(1, "b"), (3, "d")]
    await sink.aclose()

    rows = stored_outcomes(db)
    assert [r[:5] for r in rows] == [
        ("a", "u1", None, "click", 3.0),
        ("c", None, "req-7", "label:fraud", -0.25),
        ("e", "u9", "req-9", "click", 1.0),
    ]
    assert rows[0][5] == 1_714_564_800.0
    assert rows[1][5] == 1.7e9
    assert before - 1 <= rows[2][5] <= time.time() + 1  # no ts: stored as received


async def test_repeats_are_stored_once_across_batches(open_sink: OpenSink, tmp_path: Path) -> None:
    db = tmp_path / "o.duckdb"
    sink = open_sink(db)
    ingest = OutcomeIngest(sink)
    assert ingest.ingest([ev("a"), ev("b"), ev("a", value=5.0)]).duplicates == ("a",)
    second = ingest.ingest([ev("b", value=7.0), ev("c")])
    assert (second.accepted, second.duplicates) == (1, ("b",))
    await sink.aclose()
    assert [(r[0], r[4]) for r in stored_outcomes(db)] == [("a", 1.0), ("b", 1.0), ("c", 1.0)]


@pytest.mark.parametrize("recent_ids", [100_000, 0])
async def test_repeats_are_stored_once_across_a_restart(
    open_sink: OpenSink, tmp_path: Path, recent_ids: int
) -> None:
    # recent_ids=0 also sends in-batch repeats to the sink: its insert must skip them.
    db = tmp_path / "o.duckdb"
    sink = open_sink(db)
    OutcomeIngest(sink, recent_ids=recent_ids).ingest([ev("a"), ev("b")])
    await sink.aclose()

    reopened = open_sink(db)
    fresh = OutcomeIngest(reopened, recent_ids=recent_ids)  # nothing in memory any more
    result = fresh.ingest([ev("a", value=9.0), ev("c"), ev("c", value=8.0)])
    assert result.accepted == (2 if recent_ids else 3)
    await reopened.aclose()
    assert [(r[0], r[4]) for r in stored_outcomes(db)] == [("a", 1.0), ("b", 1.0), ("c", 1.0)]
