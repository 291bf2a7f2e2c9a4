"""Callers that go away and calls that arrive while the sidecar stops, over real servers."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any

import duckdb
import grpc
import pytest

from tests.conftest import wait_for


def _rows(db: Any, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_a_caller_who_cancels_leaves_a_cancelled_call_row(
    start_sidecar, channel_to, echo, tmp_path
) -> None:
    """Issue 14.11: the primary's call row is recorded, status CANCELLED, beside the
    request row, when the caller cancels mid-call; the next call is unaffected."""
    primary = await echo(delay_ms=500)
    db = tmp_path / "cancel.duckdb"
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}],
                             db_path=db)
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    call = stub(b"x", metadata=(("x-request-id", "gone-1"),))
    await wait_for(lambda: primary.calls == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_for(lambda: sc.live.route(sc.route_plans()[0].match).in_flight == 0)
    primary.set_delay(0)
    assert await stub(b"y", metadata=(("x-request-id", "kept-1"),)) == b"y"
    await sc.aclose()
    calls = _rows(db, "SELECT request_id, role, backend, served, status, error FROM calls "
                      "ORDER BY request_id")
    assert calls == [
        ("gone-1", "primary", "p", False, "CANCELLED", "cancelled by the caller"),
        ("kept-1", "primary", "p", True, "OK", None),
    ]
    assert _rows(db, "SELECT request_id, status FROM requests ORDER BY request_id") == [
        ("gone-1", "CANCELLED"), ("kept-1", "OK")]


@pytest.mark.parametrize("kind", ["server", "client", "bidi"])
async def test_a_cancelled_stream_leaves_a_cancelled_call_row(
    stream_backends, start_sidecar, channel_to, tmp_path, kind
) -> None:
    """Issue 14.11 (streams): a caller that cancels a stream midway leaves request and
    primary call rows with status CANCELLED, for each kind of stream."""
    handler, target = await stream_backends(delay_s=0.2)
    db = tmp_path / f"{kind}.duckdb"
    method = {"server": "/gen.G/Generate", "client": "/gen.G/Upload", "bidi": "/gen.G/Chat"}
    sc = await start_sidecar({"g": target},
                             [{"match": method[kind], "primary": "g", "streaming": kind,
                               "timeout_ms": 10_000}], db_path=db)
    ch = channel_to(sc.port)
    md = (("x-request-id", f"cut-{kind}"), ("x-count", "50"))
    if kind == "server":
        call: Any = ch.unary_stream(method[kind])(b"tok", metadata=md)
        assert await call.read() == b"tok0"
    elif kind == "client":
        gate = asyncio.Event()

        async def parts() -> Any:
            yield b"a"
            await gate.wait()  # never set: the caller stays mid-upload

        call = ch.stream_unary(method[kind])(parts(), metadata=md)
        await wait_for(lambda: handler.calls == 1)
    else:
        call = ch.stream_stream(method[kind])(metadata=md)
        await call.write(b"hi")
        assert await call.read() == b"HI"
    await asyncio.sleep(0.05)
    call.cancel()
    await wait_for(lambda: sc.stats()["sink"]["queue_depth"] == 0 and
                    _recorded(sc) >= 1)
    await sc.aclose()
    rows = _rows(db, "SELECT role, status FROM calls")
    assert rows == [("primary", "CANCELLED")]
    assert _rows(db, "SELECT status FROM requests") == [("CANCELLED",)]


def _recorded(sc: Any) -> int:
    counts = sc.live.calls
    return sum(n for key, n in counts.items() if key[2] == "primary")


def _hammer(port: int, counts: collections.Counter[Any], stop: threading.Event,
            started: threading.Event) -> None:
    """32 callers on their own event loop (a thread), each calling again as soon as it
    has an answer, the way a busy client fleet does; statuses are counted."""
    async def run() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ch.unary_unary("/load.T/Call")

            async def caller() -> None:
                while not stop.is_set():
                    try:
                        await stub(b"x", timeout=10)
                        counts["OK"] += 1
                        started.set()
                    except grpc.aio.AioRpcError as err:
                        counts[err.code().name] += 1
                        if err.code() == grpc.StatusCode.UNAVAILABLE:
                            counts["shutting down" if "shutting down" in (err.details() or "")
                                   else "refused"] += 1
                        await asyncio.sleep(0.005)

            await asyncio.gather(*(caller() for _ in range(32)))

    asyncio.run(run())


async def test_calls_arriving_during_shutdown_get_unavailable(start_sidecar, echo) -> None:
    """Issue 14.12: under a steady load, a stopping sidecar answers every call it does
    not serve with UNAVAILABLE (retried by clients), never CANCELLED. The event loop is
    held for 0.3 s just before the stop, as a busy sidecar's is, so calls queue up in the
    gRPC core; before the fix the core cancelled that queue when the server stopped."""
    primary = await echo(delay_ms=5)
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}],
                             shutdown={"grace_s": 5})
    counts: collections.Counter[Any] = collections.Counter()
    stop, started = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hammer, args=(sc.port, counts, stop, started))
    thread.start()
    try:
        assert await asyncio.to_thread(started.wait, 20)
        await asyncio.sleep(0.5)
        time.sleep(0.3)  # noqa: ASYNC251 - on purpose: calls pile up in the gRPC core
        await sc.aclose()
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert counts["OK"] > 0
    assert counts["CANCELLED"] == 0, dict(counts)
    assert set(counts) <= {"OK", "UNAVAILABLE", "shutting down", "refused"}, dict(counts)
    assert counts["shutting down"] > 0  # the held calls were answered, not dropped


async def test_a_streaming_shadow_obeys_the_breaker_rule(
    stream_backends, start_sidecar, channel_to
) -> None:
    """Issue 14.2 (streams): mirrored server streams that the shadow ends with a status of
    the caller's making (RESOURCE_EXHAUSTED, "quota") never open the shadow's breaker:
    every copy is still sent."""
    _primary, ptarget = await stream_backends()
    _shadow, starget = await stream_backends()
    sc = await start_sidecar(
        {"p": ptarget, "s": starget},
        [{"match": "/gen.G/*", "primary": "p", "streaming": "server",
          "shadows": [{"backend": "s", "timeout_ms": 5000}]}],
    )
    ch = channel_to(sc.port)
    for _ in range(8):
        call = ch.unary_stream("/gen.G/Fail")(b"x")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [m async for m in call]
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await wait_for(lambda: sc.mirror.in_flight == 0)
    lane = sc.stats()["routes"][0]["shadows"]["s"]
    assert lane["sent"] == 8 and lane["breaker_skipped"] == 0
    assert sc.backends["s"].breaker.state == "closed"


async def test_every_kind_of_call_arriving_at_shutdown_is_held_then_unavailable(
    stream_backends, start_sidecar, channel_to, echo, tmp_path
) -> None:
    """Issue 14.12, each kind of method: a unary call and server, client and bidi streams
    that arrive while the sidecar stops are held (none of them reaches a backend), then
    answered UNAVAILABLE, and leave no row; a call in flight still finishes OK."""
    handler, target = await stream_backends()
    slow = await echo(delay_ms=600)
    db = tmp_path / "held.duckdb"
    sc = await start_sidecar(
        {"g": target, "e": slow.target},
        [{"match": "/gen.G/Generate", "primary": "g", "streaming": "server"},
         {"match": "/gen.G/Upload", "primary": "g", "streaming": "client"},
         {"match": "/gen.G/Chat", "primary": "g", "streaming": "bidi"},
         {"match": "*", "primary": "e"}],
        db_path=db, shutdown={"grace_s": 5, "drain_s": 5, "drain_quiet_ms": 400},
    )
    ch = channel_to(sc.port)
    in_flight = asyncio.ensure_future(ch.unary_unary("/m.S/P")(b"first"))
    await wait_for(lambda: slow.calls == 1)
    stopping = asyncio.ensure_future(sc.aclose())
    proxy = sc._handler
    assert proxy is not None
    await wait_for(lambda: proxy.refusing)

    async def chunks() -> Any:
        yield b"a"

    async def drain_stream(call: Any) -> None:
        _ = [m async for m in call]

    attempts = [
        ch.unary_unary("/m.S/P")(b"late", timeout=10),
        drain_stream(ch.unary_stream("/gen.G/Generate")(b"late", timeout=10)),
        ch.stream_unary("/gen.G/Upload")(chunks(), timeout=10),
        drain_stream(ch.stream_stream("/gen.G/Chat")(chunks(), timeout=10)),
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() == grpc.StatusCode.UNAVAILABLE, result
        assert "shutting down" in (result.details() or ""), result
    assert await in_flight == b"first"
    await stopping
    assert handler.calls == 0 and slow.calls == 1
    assert proxy.refused == 4
    assert _rows(db, "SELECT request_id IS NOT NULL, status FROM requests") == [(True, "OK")]
