"""The sink cannot write (file size limit = disk full): serving goes on, records are
dropped and counted, readiness says so, and writing resumes by itself."""

from __future__ import annotations

import asyncio
import resource
import time

import duckdb
import grpc
import pytest

from sidecar.exit_codes import EXIT_DATA

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

LIMIT = 1_200_000  # bytes any file of the child may reach: a tiny "disk"


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def _limited_sidecar(sidecar_process, primary, db, **storage):
    """A sidecar child whose files may not grow past LIMIT, recording every call's bytes."""
    return sidecar_process({
        "storage": {"path": str(db), "flush_interval_ms": 50, "record_bytes": True,
                    **storage},
        "backends": [{"name": "p", "version": "1", "target": primary.target}],
        "routes": [{"match": "*", "primary": "p"}],
    }, preexec=_limit_files)


def _free_the_disk(sc) -> None:
    """Lift the file size limit on the running child."""
    resource.prlimit(sc.proc.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _count(db, sql: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute(sql).fetchall()[0][0])
    finally:
        con.close()


async def test_disk_full_degrades_then_recovers(echo, sidecar_process, tmp_path,
                                                figures) -> None:
    primary = await echo()
    db = tmp_path / "full.duckdb"
    sc = _limited_sidecar(sidecar_process, primary, db)
    await sc.wait_ready()
    answered = 0
    degraded = None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
        stub = ch.unary_unary("/m.S/P")
        body = b"z" * 4000
        for i in range(3000):
            assert await stub(body) == body  # serving goes on whatever the sink does
            answered += 1
            if i % 50 == 0:
                status, ready = await sc.get("/readyz")
                if status == 503:
                    degraded = ready
                    break
        assert degraded is not None, "the file limit was never reached"
        assert any("sink not writable" in r for r in degraded["reasons"])
        for _ in range(100):
            assert await stub(body) == body
            answered += 1
        _, stats = await sc.get("/v1/stats")
        dropped = sum(stats["sink"]["dropped"].values())
        assert dropped > 0
        peak = sc.rss_kb()
        _free_the_disk(sc)
        for _ in range(500):  # the sink re-checks itself every second, backing off to 4 s
            assert await stub(b"after") == b"after"
            answered += 1
            status, _ = await sc.get("/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.02)
        assert status == 200
        for i in range(20):
            await stub(b"late", metadata=(("x-request-id", f"late-{i}"),))
    assert sc.stop() == 0
    late = _count(db, "SELECT count(*) FROM requests WHERE request_id LIKE 'late-%'")
    total = _count(db, "SELECT count(*) FROM requests")
    figures(sent=answered, answered=answered, fallbacks=0, errors=0,
            lost=dropped, loss_note="records dropped while the disk was full",
            peak_rss_mb=round(peak / 1024, 1))
    assert late == 20  # writing resumed by itself
    assert 0 < total < answered


async def _fill_until_full(sc, stub, settle_s: float = 2.0) -> dict:
    """Send until the "disk" is full for good: /readyz answers 503 and keeps answering it
    while nothing is queued and the sink has re-checked itself several times. Its body."""
    body = b"z" * 4000
    for _ in range(100):
        for _ in range(50):
            assert await stub(body) == body
        status, ready = await sc.get("/readyz")
        if status != 503:
            continue
        deadline = time.monotonic() + settle_s
        while status == 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status, ready = await sc.get("/readyz")
        _, stats = await sc.get("/v1/stats")
        if status == 503 and stats["sink"]["queue_depth"] == 0:
            return ready
    raise AssertionError("the file limit was never reached for good")


async def test_readiness_recovers_without_traffic(echo, sidecar_process, tmp_path) -> None:
    """Issue 14.8: the disk is freed while no call comes in; the sink re-checks itself and
    /readyz answers 200 again (an idle pod must come back), and later calls are recorded."""
    primary = await echo()
    db = tmp_path / "idle.duckdb"
    sc = _limited_sidecar(sidecar_process, primary, db)
    await sc.wait_ready()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
        stub = ch.unary_unary("/m.S/P")
        degraded = await _fill_until_full(sc, stub)
        assert any("sink not writable" in r for r in degraded["reasons"])
        _free_the_disk(sc)
        status = 503
        for _ in range(300):  # no call in between: only the sink's own probe can notice
            status, _ = await sc.get("/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
        for i in range(5):
            await stub(b"late", metadata=(("x-request-id", f"late-{i}"),))
    assert sc.stop() == 0
    late = _count(db, "SELECT count(*) FROM requests WHERE request_id LIKE 'late-%'")
    assert late == 5


async def test_records_lost_at_shutdown_make_serve_exit_nonzero(
        echo, sidecar_process, tmp_path) -> None:
    """Issue 14.3: accepted records the final flush cannot write (the disk is full at
    SIGTERM) are logged and make `sidecar serve` exit non-zero (3, data); it exited 0."""
    primary = await echo()
    db = tmp_path / "lost.duckdb"
    # Nothing is flushed before the stop: every record waits for the final flush.
    sc = _limited_sidecar(sidecar_process, primary, db, flush_interval_ms=3_600_000,
                          batch_rows=1_000_000)
    await sc.wait_ready()
    body = b"z" * 4000
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
        stub = ch.unary_unary("/m.S/P")
        for _ in range(400):  # 800 rows of 4 kB: more than the 1.2 MB the "disk" holds
            assert await stub(body) == body
    assert sc.stop() == EXIT_DATA
    assert "accepted records not written" in sc.log.read_text()
