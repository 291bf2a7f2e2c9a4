"""Streaming methods pass through with flow control; server streams can be mirrored."""

from __future__ import annotations

import asyncio
import time

import duckdb
import grpc
import pytest


async def test_three_kinds_of_streams_pass_through(stream_backends, start_sidecar, channel_to,
                                                   tmp_path) -> None:
    _backend, target = await stream_backends()
    db = tmp_path / "s.duckdb"
    sc = await start_sidecar(
        {"p": target},
        [{"match": "/llm.Svc/Generate", "primary": "p", "streaming": "server"},
         {"match": "/llm.Svc/Upload", "primary": "p", "streaming": "client"},
         {"match": "/llm.Svc/Chat", "primary": "p", "streaming": "bidi"},
         {"match": "/llm.Svc/Fail", "primary": "p", "streaming": "server"}],
        db_path=db,
    )
    ch = channel_to(sc.port)
    call = ch.unary_stream("/llm.Svc/Generate")(b"tok", metadata=(("x-count", "5"),))
    got = [m async for m in call]
    assert got == [b"tok0", b"tok1", b"tok2", b"tok3", b"tok4"]
    assert ("model", "gen-1") in tuple(await call.initial_metadata())
    assert "x-request-id" in dict(await call.trailing_metadata())  # issue 18.1: trailers
    assert ("tokens", "5") in tuple(await call.trailing_metadata())

    async def parts():
        for p in (b"a", b"b", b"c"):
            yield p

    assert await ch.stream_unary("/llm.Svc/Upload")(parts()) == b"a|b|c"
    chat = ch.stream_stream("/llm.Svc/Chat")(parts())
    assert [m async for m in chat] == [b"A", b"B", b"C"]
    failing = ch.unary_stream("/llm.Svc/Fail")(b"x")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for m in failing:
            received.append(m)
    assert received == [b"one"]
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "quota"
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    rows = dict(
        (m, (s, n)) for m, s, n in con.execute(
            "SELECT method, status, messages FROM calls").fetchall()
    )
    con.close()
    assert rows["/llm.Svc/Generate"] == ("OK", 5)
    assert rows["/llm.Svc/Upload"] == ("OK", 1)
    assert rows["/llm.Svc/Chat"] == ("OK", 3)
    assert rows["/llm.Svc/Fail"] == ("RESOURCE_EXHAUSTED", 1)


async def test_flow_control_is_end_to_end(stream_backends, start_sidecar, channel_to) -> None:
    backend, target = await stream_backends()
    sc = await start_sidecar({"p": target},
                             [{"match": "*", "primary": "p", "streaming": "server",
                               "timeout_ms": 30_000}])
    ch = channel_to(sc.port)
    big = b"x" * 65_536
    call = ch.unary_stream("/llm.Svc/Generate")(big, metadata=(("x-count", "2000"),))
    it = call.__aiter__()
    for _ in range(10):
        await it.__anext__()
    await asyncio.sleep(0.5)  # the caller stops reading
    # With flow control the backend is held back by HTTP/2 windows (a few MB), far from
    # the 2000 messages (128 MB) it would write if the sidecar buffered without bound.
    assert backend.written < 400, backend.written
    call.cancel()


async def test_server_stream_mirrored_to_a_slow_shadow_under_load(
    stream_backends, start_sidecar, channel_to, tmp_path
) -> None:
    _primary, ptarget = await stream_backends()
    _shadow, starget = await stream_backends(delay_s=0.05)
    db = tmp_path / "m.duckdb"
    sc = await start_sidecar(
        {"p": ptarget, "s": starget},
        [{"match": "/llm.Svc/Generate", "primary": "p", "streaming": "server",
          "shadows": [{"backend": "s", "timeout_ms": 5000, "max_in_flight": 8}]}],
        db_path=db,
    )
    ch = channel_to(sc.port)

    async def one(i: int) -> list[bytes]:
        call = ch.unary_stream("/llm.Svc/Generate")(f"r{i}-".encode(),
                                                    metadata=(("x-count", "10"),))
        return [m async for m in call]

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(40)))
    elapsed = time.perf_counter() - t0
    for i, r in enumerate(results):
        assert r == [f"r{i}-{k}".encode() for k in range(10)]
    assert elapsed < 0.5 * 10 * 0.05 * 40 / 8  # never waited for the 0.5 s shadow streams
    lane = sc.stats()["routes"][0]["shadows"]["s"]
    assert lane["sent"] + lane["dropped"] == 40 and lane["sent"] >= 8
    await sc.aclose()  # lets the shadow streams end, then flushes
    con = duckdb.connect(str(db), read_only=True)
    shadow_rows = con.execute(
        "SELECT status, messages, first_message_ms FROM calls WHERE role = 'shadow'"
    ).fetchall()
    con.close()
    # Issue 18.2: streams mirror through the same Mirror as unary calls, so a dropped copy
    # leaves a DROPPED row too (it left none before).
    sent_rows = [r for r in shadow_rows if r[0] != "DROPPED"]
    assert len(sent_rows) == lane["sent"]
    assert len(shadow_rows) - len(sent_rows) == lane["dropped"] > 0
    assert all(s == "OK" and n == 10 and f >= 40 for s, n, f in sent_rows)


async def test_report_compares_time_to_first_message(stream_backends, start_sidecar,
                                                     channel_to, tmp_path) -> None:
    from analysis import analyze_divergence, open_source

    _primary, ptarget = await stream_backends()
    _shadow, starget = await stream_backends(delay_s=0.03)
    db = tmp_path / "ttfm.duckdb"
    sc = await start_sidecar(
        {"p": ptarget, "s": starget},
        [{"match": "/llm.Svc/Generate", "primary": "p", "streaming": "server",
          "shadows": [{"backend": "s", "timeout_ms": 5000}]}],
        db_path=db,
    )
    ch = channel_to(sc.port)
    for _ in range(10):
        assert len([m async for m in ch.unary_stream("/llm.Svc/Generate")(b"q")]) == 3
    await sc.aclose()
    report = analyze_divergence(open_source(db=str(db))).to_dict()
    latency = report["pairs"][0]["latency_ms"]
    text = str(latency)
    assert "first_message_p50" in text
    con = open_source(db=str(db))
    p, s = con.execute(
        "SELECT median(first_message_ms) FILTER (WHERE role = 'primary'), "
        "median(first_message_ms) FILTER (WHERE role = 'shadow') FROM calls").fetchall()[0]
    con.close()
    assert s >= 30 > p  # the slow shadow's first token came later
    assert latency["primary"]["first_message_p50"] == pytest.approx(p, rel=1e-12)
    assert latency["shadow"]["first_message_p50"] == pytest.approx(s, rel=1e-12)
    # past the numpy budget the medians come from a spilling sort, the same figures
    spilled = analyze_divergence(open_source(db=str(db)), numpy_bytes=0).to_dict()
    assert spilled["pairs"][0]["latency_ms"] == latency
