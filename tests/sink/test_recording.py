"""Every routed request and backend call is recorded, decodable, and appended on restart."""

from __future__ import annotations

import asyncio

import duckdb
import grpc
import pytest

from sidecar.config import StorageConfig
from sidecar.sink import SCHEMA_VERSION, CallRecord, Decoding, DuckDBSink


async def test_recorded_rows_match_what_was_sent(echo, start_sidecar, channel_to, tmp_path) -> None:
    primary, shadow = await echo(), await echo()
    db = tmp_path / "rec.duckdb"
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target},
        [{"match": "/m.S/*", "primary": "p", "shadows": [{"backend": "s"}]}],
        db_path=db,
        storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True},
    )
    stub = channel_to(sc.port).unary_unary("/m.S/Predict")
    sent = {f"rid-{i}": f"body-{i}".encode() for i in range(30)}
    for rid, body in sent.items():
        await stub(body, metadata=(("x-request-id", rid),))
    failing = stub(b"bad", metadata=(("x-request-id", "rid-bad"), ("x-echo-status", "NOT_FOUND")))
    with pytest.raises(grpc.aio.AioRpcError):
        await failing
    version = sc.loaded.version
    await sc.aclose()

    con = duckdb.connect(str(db), read_only=True)
    reqs = con.execute(
        "SELECT request_id, route, method, status, request_size, request_bytes, config_version "
        "FROM requests"
    ).fetchall()
    by_id = {r[0]: r for r in reqs}
    assert set(by_id) == {*sent, "rid-bad"}
    for rid, body in sent.items():
        _, route, method, status, size, raw, cfg = by_id[rid]
        assert (route, method, status, size, raw, cfg) == (
            "/m.S/*", "/m.S/Predict", "OK", len(body), body, version
        )
    assert by_id["rid-bad"][3] == "NOT_FOUND"
    calls = con.execute(
        "SELECT request_id, backend, backend_version, role, served, status, response_bytes, "
        "latency_ms FROM calls"
    ).fetchall()
    primary_rows = {c[0]: c for c in calls if c[3] == "primary"}
    shadow_rows = {c[0]: c for c in calls if c[3] == "shadow"}
    assert set(primary_rows) == set(shadow_rows) == {*sent, "rid-bad"}
    for rid, body in sent.items():
        assert primary_rows[rid][1:7] == ("p", "p-v1", "primary", True, "OK", body)
        assert shadow_rows[rid][1:7] == ("s", "s-v1", "shadow", False, "OK", body)
        assert primary_rows[rid][7] > 0
    # The pair is a join on request_id.
    pairs = con.execute(
        "SELECT count(*) FROM calls p JOIN calls s USING (request_id) "
        "WHERE p.role = 'primary' AND s.role = 'shadow'"
    ).fetchone()
    assert pairs == (31,)
    configs = con.execute("SELECT config_version FROM configs").fetchall()
    assert configs == [(version,)]
    assert con.execute("SELECT max(version) FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    con.close()


async def test_raw_bytes_not_kept_unless_configured(echo, start_sidecar, channel_to, tmp_path):
    primary = await echo()
    db = tmp_path / "nobytes.duckdb"
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}], db_path=db)
    await channel_to(sc.port).unary_unary("/a.B/C")(b"secret")
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT request_bytes, request_size FROM requests").fetchall() == [(None, 6)]
    assert con.execute("SELECT response_bytes, response_size FROM calls").fetchall() == [(None, 6)]
    con.close()


async def test_restart_appends(echo, start_sidecar, channel_to, tmp_path) -> None:
    primary = await echo()
    db = tmp_path / "append.duckdb"
    for round_ in range(2):
        sc = await start_sidecar(
            {"p": primary.target}, [{"match": "*", "primary": "p"}], db_path=db
        )
        stub = channel_to(sc.port).unary_unary("/a.B/C")
        for i in range(5):
            await stub(b"x", metadata=(("x-request-id", f"r{round_}-{i}"),))
        await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    ids = sorted(r[0] for r in con.execute("SELECT request_id FROM requests").fetchall())
    assert ids == sorted(f"r{r}-{i}" for r in range(2) for i in range(5))
    assert con.execute("SELECT count(*) FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    con.close()


def _call(i: int) -> CallRecord:
    dec = Decoding(codec=None, compare_output=None, score_index=-1, record_bytes=False)
    return CallRecord(
        f"r{i}", 0.0, "*", "/a.B/C", "p", "1", "primary", True, "OK", 1.0, 1, b"x", None, "v",
        dec,
    )


async def test_full_buffer_drops_and_counts(tmp_path) -> None:
    sink = DuckDBSink(StorageConfig(path=str(tmp_path / "full.duckdb"), buffer_rows=100,
                                    flush_interval_ms=60_000, batch_rows=1_000_000))
    sink.open()
    for i in range(250):
        sink.record_call(_call(i))
    assert sink.stats.accepted["calls"] == 100
    assert sink.stats.dropped["calls"] == 150
    await sink.aclose()
    assert sink.stats.written["calls"] == 100
    con = duckdb.connect(str(tmp_path / "full.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM calls").fetchone() == (100,)
    con.close()


async def test_batch_size_triggers_an_early_flush(tmp_path) -> None:
    sink = DuckDBSink(StorageConfig(path=str(tmp_path / "b.duckdb"), flush_interval_ms=60_000,
                                    batch_rows=50))
    sink.open()
    for i in range(50):
        sink.record_call(_call(i))
    for _ in range(200):
        if sink.stats.written["calls"] == 50:
            break
        await asyncio.sleep(0.01)
    assert sink.stats.written["calls"] == 50  # long before the 60 s interval
    await sink.aclose()


async def test_newer_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "future.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO schema_version VALUES (999, now()::TIMESTAMP)")
    con.close()
    from sidecar.errors import SinkError

    with pytest.raises(SinkError, match="newer"):
        DuckDBSink(StorageConfig(path=str(path))).open()
