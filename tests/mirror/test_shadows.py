"""Shadows get sampled copies and never touch the caller's answer or latency."""

from __future__ import annotations

import asyncio
import time
import zlib

import duckdb
import pytest

from sidecar.routing import sample_bucket
from tests.conftest import wait_for


async def test_shadow_gets_a_marked_copy(echo, start_sidecar, channel_to) -> None:
    primary, shadow = await echo(), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target},
        [{"match": "*", "primary": "p", "shadows": [{"backend": "s"}]}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/Predict")
    call = stub(b"features", metadata=(("x-user", "42"),))
    assert await call == b"features"
    await wait_for(lambda: shadow.calls == 1)
    seen = dict(shadow.seen_metadata[-1])
    assert seen["x-shadow"] == "true"
    assert seen["x-user"] == "42"
    assert seen["x-request-id"] == dict(await call.trailing_metadata())["x-request-id"]
    assert "x-shadow" not in dict(primary.seen_metadata[-1])
    assert shadow.seen_methods[-1] == "/m.S/Predict"


async def test_sampling_is_deterministic_per_request_id(echo, start_sidecar, channel_to) -> None:
    primary, shadow, twin = await echo(), await echo(), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target, "t": twin.target},
        [{"match": "*", "primary": "p", "shadows": [{"backend": "s", "sample_percent": 25},
                                                     {"backend": "t", "sample_percent": 25}]}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    ids = [f"req-{i}" for i in range(400)]
    for rid in ids:
        await stub(b"x", metadata=(("x-request-id", rid),))
    # The documented rule, computed here independently: CRC-32 of the id, mod 10000, unsalted.
    assert [sample_bucket(rid) for rid in ids[:3]] == [
        zlib.crc32(rid.encode()) % 10_000 for rid in ids[:3]]
    expected = {rid for rid in ids if zlib.crc32(rid.encode()) % 10_000 < 2500}
    await wait_for(lambda: shadow.calls == len(expected))
    await asyncio.sleep(0.1)
    mirrored = {dict(md)["x-request-id"] for md in shadow.seen_metadata}
    assert shadow.calls == len(expected)
    assert 60 < len(expected) < 140  # about a quarter of 400
    assert mirrored <= expected
    # Unsalted: a second shadow at the same percentage sees exactly the same requests.
    await wait_for(lambda: twin.calls == len(expected))
    assert {dict(md)["x-request-id"] for md in twin.seen_metadata} == mirrored


async def test_hanging_shadow_does_not_delay_the_caller(echo, start_sidecar, channel_to) -> None:
    primary, shadow = await echo(), await echo(hang=True)
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target},
        [
            {
                "match": "*",
                "primary": "p",
                "shadows": [{"backend": "s", "timeout_ms": 3000, "max_in_flight": 1000}],
            }
        ],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(stub(str(i).encode()) for i in range(50)))
    elapsed = time.perf_counter() - t0
    assert answers == [str(i).encode() for i in range(50)]
    # Every shadow call is still hanging (3 s deadline) while all answers are back.
    assert sc.stats()["routes"][0]["shadows"]["s"]["in_flight"] == 50
    assert elapsed < 2.0


async def test_in_flight_cap_drops_and_counts(echo, start_sidecar, channel_to, tmp_path) -> None:
    primary, shadow = await echo(), await echo(hang=True)
    db = tmp_path / "cap.duckdb"
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target},
        [
            {
                "match": "*",
                "primary": "p",
                "shadows": [{"backend": "s", "timeout_ms": 300, "max_in_flight": 4}],
            }
        ],
        db_path=db,
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for i in range(20):
        assert await stub(str(i).encode()) == str(i).encode()
    lane = sc.stats()["routes"][0]["shadows"]["s"]
    assert (lane["sampled"], lane["sent"], lane["dropped"]) == (20, 4, 16)
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    rows = dict(
        con.execute(
            "SELECT status, count(*) FROM calls WHERE role = 'shadow' GROUP BY ALL"
        ).fetchall()
    )
    assert rows == {"DROPPED": 16, "DEADLINE_EXCEEDED": 4}
    con.close()


@pytest.mark.parametrize("kind", ["dead", "failing", "slow"])
async def test_broken_shadow_never_reaches_the_caller(
    echo, start_sidecar, channel_to, tmp_path, kind
) -> None:
    primary = await echo()
    if kind == "dead":
        gone = await echo()
        shadow_target = gone.target
        await gone.aclose()
    else:
        shadow = await echo(delay_ms=400 if kind == "slow" else 0)
        shadow_target = shadow.target
    db = tmp_path / f"{kind}.duckdb"
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow_target},
        [{"match": "*", "primary": "p", "shadows": [{"backend": "s", "timeout_ms": 100}]}],
        db_path=db,
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    md = (("x-echo-status", "INTERNAL"),) if kind == "failing" else ()
    for i in range(10):
        if kind == "failing":
            # The primary sees the same header and fails too: the caller gets the primary's
            # own error, exactly; the shadow's identical error is recorded, not surfaced.
            with pytest.raises(Exception) as info:
                await stub(b"x", metadata=md)
            assert "INTERNAL" in str(info.value)
        else:
            assert await stub(str(i).encode()) == str(i).encode()
        if kind == "dead":  # one copy at a time, so the breaker sees the streak in order
            await wait_for(lambda: sc.stats()["routes"][0]["shadows"]["s"]["in_flight"] == 0)
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT status, error FROM calls WHERE role = 'shadow'").fetchall()
    con.close()
    statuses = {status for status, _ in rows}
    expected = {"dead": "UNAVAILABLE", "failing": "INTERNAL", "slow": "DEADLINE_EXCEEDED"}
    assert len(rows) == 10
    assert expected[kind] in statuses
    # A shadow that keeps failing trips its circuit breaker: later copies are skipped
    # (recorded as DROPPED, "circuit open") instead of being sent.
    assert statuses <= {expected[kind], "DROPPED"}
    assert all(err == "circuit open" for status, err in rows if status == "DROPPED")
    if kind == "dead":  # default breaker: 5 consecutive failures open it for 5 s
        counts = {st: sum(1 for s, _ in rows if s == st) for st in statuses}
        assert counts == {"UNAVAILABLE": 5, "DROPPED": 5}


async def test_several_shadows_each_get_a_copy(echo, start_sidecar, channel_to) -> None:
    primary, s1, s2 = await echo(), await echo(), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "s1": s1.target, "s2": s2.target},
        [{"match": "*", "primary": "p", "shadows": [{"backend": "s1"}, {"backend": "s2"}]}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    for _ in range(10):
        await stub(b"x")
    await wait_for(lambda: s1.calls == 10 and s2.calls == 10)
