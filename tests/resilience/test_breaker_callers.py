"""Breakers a caller can neither wedge nor open, over real sidecars and echo backends."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import pytest

from sidecar.config import parse_config
from sidecar.resilience import CALLER_DEADLINE, CALLER_FAULTS
from tests.conftest import sidecar_config, wait_for

DOWN = (("x-echo-status", "UNAVAILABLE"), ("x-echo-details", "model server restarting"))


def _backend(name: str, target: str, **breaker: Any) -> dict[str, Any]:
    return {"name": name, "version": "1", "target": target, "breaker": breaker}


async def _trip(stub: Any, times: int) -> None:
    for _ in range(times):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub(b"x", metadata=DOWN)


async def _answers_within(stub: Any, seconds: float) -> bool:
    """Does a plain call get an answer within ``seconds`` (an open breaker refuses it)?"""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            if await stub(b"ok", timeout=2) == b"ok":
                return True
        except grpc.aio.AioRpcError as err:
            assert "circuit open" in (err.details() or ""), err
        await asyncio.sleep(0.05)
    return False


async def _cancel_after(stub: Any, seconds: float) -> None:
    call = stub(b"probe", metadata=(("x-echo-delay-ms", "300"),))
    await asyncio.sleep(seconds)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_cancelled_probe_does_not_wedge_the_breaker(
    start_sidecar, channel_to, echo, tmp_path
) -> None:
    """Issue 14.1: trip the breaker, wait out the cooldown, cancel the half-open probe 10 ms
    in. The probe slot comes back: the next call probes and closes it, also after a reload
    that keeps the backend (and its breaker)."""
    primary = await echo(delay_ms=30)
    backends = [_backend("p", primary.target, cooldown_s=0.3)]
    routes = [{"match": "*", "primary": "p"}]
    sc = await start_sidecar({}, routes, backends_override=backends)
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    breaker = sc.backends["p"].breaker
    for round_ in range(2):
        await _trip(stub, 5)
        assert breaker.state == "open"
        await asyncio.sleep(0.35)
        await _cancel_after(stub, 0.01)  # the probe, cut by its caller
        if round_ == 0:
            # A reload that keeps the backend keeps its breaker: it must not keep a wedge.
            data = sidecar_config(tmp_path / "sidecar.duckdb", {},
                                  [{**routes[0], "timeout_ms": 900}],
                                  backends_override=backends)
            assert await sc.reload(parse_config(data), actor="test", reason="14.1")
            assert sc.backends["p"].breaker is breaker
        assert await _answers_within(stub, 3.0), breaker.snapshot()
        assert breaker.state == "closed"


async def test_a_probe_cut_by_the_callers_deadline_gives_its_slot_back(
    start_sidecar, channel_to, echo
) -> None:
    """Issue 14.1 (deadline path): a half-open probe that ends DEADLINE_EXCEEDED because
    its caller allowed only 15 ms is no verdict (it neither reopens the breaker nor keeps
    the slot): the very next call probes and closes it."""
    primary = await echo(delay_ms=30)
    sc = await start_sidecar({}, [{"match": "*", "primary": "p"}],
                             backends_override=[_backend("p", primary.target, cooldown_s=0.3)])
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    await _trip(stub, 5)
    await asyncio.sleep(0.35)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(b"x", timeout=0.015)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    route = sc.live.route(sc.route_plans()[0].match)
    await wait_for(lambda: primary.calls == 6 and route.in_flight == 0)
    assert await stub(b"ok", timeout=2) == b"ok"  # no second cooldown to wait out
    assert sc.backends["p"].breaker.state == "closed"
    assert sc.backends["p"].breaker.opened == 1


async def test_short_caller_deadlines_do_not_open_the_breaker(
    start_sidecar, channel_to, echo
) -> None:
    """Issue 14.2: five calls with a 15 ms deadline against a 30 ms backend time out, but
    the caller's deadline was the limit, not the route's timeout: the breaker stays closed
    for everyone else."""
    primary = await echo(delay_ms=30)
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}])
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for _ in range(8):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(b"x", timeout=0.015)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sc.backends["p"].breaker.state == "closed"
    assert await stub(b"ok", timeout=2) == b"ok"


async def test_the_routes_own_timeout_still_counts(start_sidecar, channel_to, echo) -> None:
    """Issue 14.2, the other side: when the route's timeout_ms was the limit the slow
    backend is at fault, and the breaker opens."""
    primary = await echo(delay_ms=300)
    sc = await start_sidecar({"p": primary.target},
                             [{"match": "*", "primary": "p", "timeout_ms": 40}])
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sc.backends["p"].breaker.state == "open"


@pytest.mark.parametrize("code", sorted(CALLER_FAULTS - {"CANCELLED"}))
async def test_statuses_of_the_callers_making_never_open_a_breaker(
    start_sidecar, channel_to, echo, code
) -> None:
    """Issue 14.2: codes a backend returns because of the caller's input do not count, on
    the primary, on a shadow lane, or on a fallback backend, even when a fallback lists
    the code (RESOURCE_EXHAUSTED is in its defaults)."""
    primary, shadow, backup = await echo(), await echo(), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target, "b": backup.target},
        [{"match": "*", "primary": "p", "shadows": [{"backend": "s"}],
          "fallback": {"backend": "b", "codes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for _ in range(8):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(b"x", metadata=(("x-echo-status", code),))
        assert info.value.code() == grpc.StatusCode[code]
    await wait_for(lambda: sc.mirror.in_flight == 0 and shadow.calls == 8)
    states = {name: b.breaker.state for name, b in sc.backends.items()}
    assert states == {"p": "closed", "s": "closed", "b": "closed"}
    assert shadow.calls == 8


async def test_a_backend_cancelled_status_never_counts(
    start_sidecar, channel_to, echo, tmp_path
) -> None:
    """Issue 14.2: CANCELLED never counts, even listed in the fallback's codes."""
    primary = await echo()
    static = tmp_path / "fallback.json"
    static.write_text('{"base64": "c3RhdGlj"}')
    sc = await start_sidecar(
        {}, [{"match": "*", "primary": "p",
              "fallback": {"static": str(static), "codes": ["UNAVAILABLE", "CANCELLED"]}}],
        backends_override=[_backend("p", primary.target, consecutive_failures=1)],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for _ in range(3):
        assert await stub(b"x", metadata=(("x-echo-status", "CANCELLED"),)) == b"static"
    assert primary.calls == 3
    assert sc.backends["p"].breaker.state == "closed"


async def test_state_changes_are_logged_with_the_last_error(
    start_sidecar, channel_to, echo, caplog
) -> None:
    """Issue 15.8: opening logs a warning naming the backend, the reason and the last
    error's status and message; closing again logs that too; the snapshot says the same."""
    primary = await echo()
    sc = await start_sidecar({}, [{"match": "*", "primary": "p"}],
                             backends_override=[_backend("p", primary.target, cooldown_s=0.2)])
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    with caplog.at_level(logging.INFO, logger="sidecar.resilience.breaker"):
        await _trip(stub, 5)
        snap = sc.backends["p"].breaker.snapshot()
        assert snap["state"] == "open" and snap["opened"] == 1
        assert snap["last_error"]["status"] == "UNAVAILABLE"
        assert snap["last_error"]["message"] == "model server restarting"
        await asyncio.sleep(0.25)
        assert await stub(b"ok") == b"ok"
    lines = [r for r in caplog.records if r.name == "sidecar.resilience.breaker"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    opened, closed = (r.getMessage() for r in lines)
    assert "breaker p opened" in opened and "5 failures in a row" in opened
    assert "UNAVAILABLE: 'model server restarting'" in opened
    assert "breaker p closed" in closed
    assert sc.backends["p"].breaker.snapshot()["state"] == "closed"


async def test_callers_cannot_push_a_canary_into_rollback(
    start_sidecar, channel_to, echo, tmp_path
) -> None:
    """Issue 14.2 (guardrails): the canary's error-rate evidence applies the breaker's rule,
    so calls that fail by the caller's doing (bad input, a deadline shorter than the
    backend needs) are no errors of either arm; the backend's own failures still are."""
    import duckdb

    from sidecar.canary.guardrails import gather_evidence

    stable, candidate = await echo(delay_ms=30), await echo(delay_ms=30)
    db = tmp_path / "canary.duckdb"
    spec = {"stable": "stable", "candidate": "candidate", "steps": [50, 100],
            "evaluation_interval_s": 3600, "unit": {"metadata": "x-user-id"}}
    sc = await start_sidecar({"stable": stable.target, "candidate": candidate.target},
                             [{"match": "*", "primary": "stable", "canary": spec}], db_path=db)
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for i in range(60):
        user = (("x-user-id", f"u{i}"),)
        assert await stub(b"ok", metadata=user) == b"ok"
        for bad in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub(b"x", metadata=(*user, ("x-echo-status", bad)))
        try:  # a loaded machine may still answer in time, or cut it before it is served
            await stub(b"x", metadata=user, timeout=0.015)
        except grpc.aio.AioRpcError:
            pass
    for i in range(4):  # the backend's own failures still count
        with pytest.raises(grpc.aio.AioRpcError):
            await stub(b"x", metadata=(("x-user-id", f"down{i}"), *DOWN))
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    try:
        ev = gather_evidence(con, "*", "candidate", "stable", 0.0, 0.0)
        (theirs,) = con.execute(
            "SELECT count(*) FROM calls WHERE served AND role IN ('canary', 'stable') "
            "AND (status IN ('INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED') OR error = ?)",
            [CALLER_DEADLINE],
        ).fetchone()
    finally:
        con.close()
    assert theirs >= 120  # recorded, as they happened, and left out of the evidence
    assert ev.n_canary > 10 and ev.n_stable > 10
    assert ev.n_canary + ev.n_stable - ev.lat_n_canary - ev.lat_n_stable == 4
    assert ev.err_canary + ev.err_stable == 4
