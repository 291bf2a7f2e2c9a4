"""``POST /v1/outcomes`` mounted on a real aiohttp app, called with a real client."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.outcomes import MemoryOutcomeSink, OutcomeIngest
from tests.outcomes.conftest import OpenSink, StartHttp, stored_outcomes


def ev(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "unit_id": "u1", "metric": "click", "value": 1, **fields}


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    data = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_a_mixed_batch_answers_200_with_the_result(
    start_http: StartHttp, http_session: aiohttp.ClientSession, open_sink: OpenSink, tmp_path: Path
) -> None:
    db = tmp_path / "h.duckdb"
    sink = open_sink(db)
    url = await start_http(OutcomeIngest(sink))
    status, body = await post(
        http_session,
        url,
        {
            "events": [
                ev("a", ts="2024-05-01T12:00:00+02:00"),
                ev("b", value=None),
                ev("a"),
                ev("c"),
            ]
        },
    )
    assert status == 200
    assert body == {
        "accepted": 2,
        "duplicates": ["a"],
        "rejected": [{"index": 1, "event_id": "b", "reason": "value: required"}],
        "dropped": 0,
    }
    status, body = await post(http_session, url, {"events": []})
    assert (status, body) == (200, {"accepted": 0, "duplicates": [], "rejected": [], "dropped": 0})
    await sink.aclose()
    rows = stored_outcomes(db)
    assert [r[0] for r in rows] == ["a", "c"]
    assert rows[0][5] == 1_714_557_600.0  # 12:00+02:00 is 10:00Z


async def test_every_event_rejected_answers_400_with_the_result(
    start_http: StartHttp, http_session: aiohttp.ClientSession
) -> None:
    url = await start_http(OutcomeIngest(MemoryOutcomeSink()))
    status, body = await post(http_session, url, {"events": [ev("a", metric="9"), "x"]})
    assert status == 400
    assert body["accepted"] == 0 and [r["index"] for r in body["rejected"]] == [0, 1]
    assert body["rejected"][1] == {
        "index": 1,
        "event_id": None,
        "reason": "event: must be an object, not a string",
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "malformed JSON at line 1 column 2"),
        (b"", "empty body"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b'{"events": [' + b"1" * 5000 + b"]}", "malformed JSON"),
        (b"[]", 'the body must be a JSON object {"events": [...]}'),
        (b'"events"', "the body must be a JSON object"),
        (b"{}", "events: required"),
        (b'{"events": {"event_id": "a"}}', "events: must be a list of event objects"),
        (b'{"events": null}', "events: must be a list"),
        (b'{"events": [], "extra": 1}', "extra: unknown field"),
    ],
)
async def test_a_body_that_is_not_an_event_list_answers_400(
    start_http: StartHttp, http_session: aiohttp.ClientSession, body: bytes, error: str
) -> None:
    sink = MemoryOutcomeSink()
    url = await start_http(OutcomeIngest(sink))
    status, answer = await post(http_session, url, body)
    assert status == 400
    assert set(answer) == {"error"} and error in answer["error"], answer
    assert sink.rows == []


async def test_too_many_events_answers_413(
    start_http: StartHttp, http_session: aiohttp.ClientSession
) -> None:
    sink = MemoryOutcomeSink()
    url = await start_http(OutcomeIngest(sink, max_events=3))
    status, body = await post(http_session, url, {"events": [ev(str(i)) for i in range(4)]})
    assert status == 413
    assert body == {"error": "events: a batch may hold at most 3 events, got 4; split it"}
    assert sink.rows == []


async def test_a_body_over_the_cap_answers_413(
    start_http: StartHttp, http_session: aiohttp.ClientSession
) -> None:
    url = await start_http(OutcomeIngest(MemoryOutcomeSink()), max_body_bytes=1000)
    events = {"events": [ev(f"e{i}") for i in range(20)]}
    status, body = await post(http_session, url, events)
    assert status == 413 and body == {"error": "request body larger than 1000 bytes"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap counts bytes read
        data = json.dumps(events).encode()
        for start in range(0, len(data), 100):
            yield data[start : start + 100]

    async with http_session.post(url, data=chunks()) as resp:
        assert resp.status == 413
        assert await resp.json() == {"error": "request body larger than 1000 bytes"}


async def test_bodies_above_aiohttps_default_limit_are_read(
    start_http: StartHttp, http_session: aiohttp.ClientSession
) -> None:
    # aiohttp's client_max_size is 1 MiB by default; our own cap (8 MiB) applies instead.
    sink = MemoryOutcomeSink()
    url = await start_http(OutcomeIngest(sink))
    pad = "u" * 200
    events = {"events": [ev(f"e{i}", unit_id=pad) for i in range(8000)]}
    assert len(json.dumps(events)) > 2 * 1024 * 1024
    status, body = await post(http_session, url, events)
    assert (status, body["accepted"]) == (200, 8000)
    assert len(sink.rows) == 8000
