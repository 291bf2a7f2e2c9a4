"""Calls through the sidecar reach the caller exactly as the primary answered them."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest


async def test_bytes_and_metadata_pass_through(echo, start_sidecar, channel_to) -> None:
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}])
    stub = channel_to(sc.port).unary_unary("/any.Service/Method")
    payload = bytes(range(256)) * 40
    call = stub(payload, metadata=(("x-echo-trailing", "model-version=7"), ("x-user", "u1")))
    assert await call == payload
    # Issue 18.1: the request id comes back in the trailers by default.
    initial = dict(await call.trailing_metadata())
    assert "x-request-id" not in dict(await call.initial_metadata())
    assert len(initial["x-request-id"]) == 32
    assert ("model-version", "7") in tuple(await call.trailing_metadata())
    assert await call.code() == grpc.StatusCode.OK
    seen = dict(primary.seen_metadata[-1])
    assert seen["x-user"] == "u1"
    assert seen["x-request-id"] == initial["x-request-id"]
    assert primary.seen_methods[-1] == "/any.Service/Method"


async def test_incoming_request_id_is_honoured(echo, start_sidecar, channel_to) -> None:
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}])
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    call = stub(b"x", metadata=(("x-request-id", "req-123"),))
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == "req-123"
    assert dict(primary.seen_metadata[-1])["x-request-id"] == "req-123"


@pytest.mark.parametrize(
    "code",
    ["NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAVAILABLE", "INTERNAL", "ABORTED"],
)
async def test_error_status_and_details_pass_through(echo, start_sidecar, channel_to, code) -> None:
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}])
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(
            b"x",
            metadata=(
                ("x-echo-status", code),
                ("x-echo-details", f"model says {code}"),
                ("x-echo-trailing", "why=because"),
            ),
        )
    err = info.value
    assert err.code() == grpc.StatusCode[code]
    assert err.details() == f"model says {code}"
    assert ("why", "because") in tuple(err.trailing_metadata())
    assert "x-request-id" in dict(err.trailing_metadata())


async def test_unrouted_method_is_unimplemented_naming_it(echo, start_sidecar, channel_to) -> None:
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "/pkg.Svc/Known", "primary": "p"}])
    ch = channel_to(sc.port)
    assert await ch.unary_unary("/pkg.Svc/Known")(b"ok") == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ch.unary_unary("/pkg.Svc/Other")(b"x")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/pkg.Svc/Other" in (info.value.details() or "")
    assert primary.calls == 1


async def test_route_precedence_exact_then_service_then_default(
    echo, start_sidecar, channel_to
) -> None:
    a, b, c = await echo(), await echo(), await echo()
    sc = await start_sidecar(
        {"a": a.target, "b": b.target, "c": c.target},
        [
            {"match": "*", "primary": "c"},
            {"match": "/pkg.Svc/*", "primary": "b"},
            {"match": "/pkg.Svc/Exact", "primary": "a"},
        ],
    )
    ch = channel_to(sc.port)
    await ch.unary_unary("/pkg.Svc/Exact")(b"1")
    await ch.unary_unary("/pkg.Svc/Other")(b"2")
    await ch.unary_unary("/other.Svc/X")(b"3")
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)


async def test_route_timeout_bounds_the_backend_call(echo, start_sidecar, channel_to) -> None:
    primary = await echo(hang=True)
    sc = await start_sidecar(
        {"p": primary.target}, [{"match": "*", "primary": "p", "timeout_ms": 150}]
    )
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    t0 = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(b"x", timeout=10)
    elapsed = time.perf_counter() - t0
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.1 < elapsed < 5  # ended by the route's 150 ms, not the caller's 10 s


async def test_caller_deadline_smaller_than_route_timeout_is_propagated(
    echo, start_sidecar, channel_to
) -> None:
    primary = await echo()
    sc = await start_sidecar(
        {"p": primary.target}, [{"match": "*", "primary": "p", "timeout_ms": 60_000}]
    )
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    await stub(b"x", timeout=2.0)
    remaining = primary.seen_time_remaining[-1]
    assert remaining is not None and remaining <= 2.05  # grpc-timeout rounds up a little
    await stub(b"y")  # no caller deadline: the route's timeout applies
    remaining = primary.seen_time_remaining[-1]
    assert remaining is not None and 2.0 < remaining <= 60.2


async def test_dead_primary_gives_unavailable(start_sidecar, channel_to, echo) -> None:
    gone = await echo()
    target = gone.target
    await gone.aclose()
    sc = await start_sidecar({"p": target}, [{"match": "*", "primary": "p", "timeout_ms": 2000}])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel_to(sc.port).unary_unary("/a.B/C")(b"x")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_concurrent_calls_each_get_their_own_answer(echo, start_sidecar, channel_to) -> None:
    primary = await echo(delay_ms=5)
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}])
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    payloads = [f"payload-{i}".encode() * (i % 7 + 1) for i in range(200)]
    answers = await asyncio.gather(*(stub(p) for p in payloads))
    assert answers == payloads
