"""Replay: recorded traffic re-sent to a candidate pairs with the primary; resumable."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from analysis.divergence import analyze_divergence
from analysis.load import open_source
from sidecar.demo import (
    ModelServerHandle,
    build_infer_request,
    make_demo_models,
    start_model_server,
)
from sidecar.replay import ReplayInputError, ReplayOptions, replay
from sidecar.replay.cli import main as replay_main
from sidecar.sink import migrate

ROUTE = "/inference.GRPCInferenceService/ModelInfer"
N = 40


@pytest.fixture
async def models() -> AsyncIterator[dict[str, ModelServerHandle]]:
    primary, retrained = make_demo_models()
    servers = {
        "primary": await start_model_server(primary),
        "candidate": await start_model_server(retrained),
        "slow": await start_model_server(retrained, delay_ms=30),
    }
    yield servers
    for server in servers.values():
        await server.aclose()


@pytest.fixture
async def recorded(models: dict[str, ModelServerHandle], start_sidecar: Any, channel_to: Any,
                   tmp_path: Path) -> Path:
    """A stopped sidecar's file: N OIP requests recorded with their bytes."""
    db = tmp_path / "traffic.duckdb"
    sc = await start_sidecar(
        {"fraud-v7": models["primary"].target},
        [{"match": ROUTE, "primary": "fraud-v7", "codec": "oip"}],
        db_path=db,
        storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True},
    )
    stub = channel_to(sc.port).unary_unary(ROUTE)
    rng = np.random.default_rng(11)
    for i, row in enumerate(rng.standard_normal((N, 8))):
        await stub(build_infer_request("demo", row, raw=bool(i % 2)),
                   metadata=(("x-request-id", f"req-{i:03d}"),), timeout=5)
    await sc.aclose()
    return db


def options(db: Path, target: str, tmp_path: Path, **kw: Any) -> ReplayOptions:
    base = ReplayOptions(
        source=str(db), route=ROUTE, target=target, backend_name="fraud-v8",
        backend_version="8.0.0", run_id="run1", out=str(tmp_path / "replay-run1.duckdb"),
        concurrency=4, progress=False,
    )
    return replace(base, **kw)


def replay_rows(out: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(out, read_only=True)
    try:
        return con.execute(
            "SELECT request_id, count(*) FROM calls WHERE role = 'replay' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()


def divergence_with_replay_as_shadow(out: str) -> dict[str, Any]:
    """analysis.divergence compares role 'shadow'; this view reads 'replay' as a shadow."""
    con = open_source(db=out)
    con.execute(
        "CREATE OR REPLACE VIEW calls AS SELECT * REPLACE (CASE WHEN role = 'replay' "
        "THEN 'shadow' ELSE role END AS role) FROM src.main.calls"
    ).fetchall()
    try:
        return analyze_divergence(con, route=ROUTE).to_dict()
    finally:
        con.close()


async def test_replay_pairs_with_the_recorded_primary(
    recorded: Path, models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    opts = options(recorded, models["candidate"].target, tmp_path, rate=400.0)
    result = await replay(opts)
    assert (result.selected, result.sent, result.ok, result.interrupted) == (N, N, N, False)
    assert models["candidate"].calls == N
    rows = replay_rows(opts.out)
    assert len(rows) == N and all(count == 1 for _, count in rows)

    con = duckdb.connect(opts.out, read_only=True)
    copied = con.execute(
        "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM calls "
        "WHERE role = 'primary'), (SELECT count(*) FROM configs)"
    ).fetchall()
    assert copied == [(N, N, 1)]
    joined = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE p.label = r.label), "
        "count(*) FILTER (WHERE r.backend = 'fraud-v8' AND r.backend_version = '8.0.0' "
        "AND abs(epoch(r.ts) - epoch(q.ts)) < 0.001 AND r.output IS NOT NULL "
        "AND r.score IS NOT NULL) "
        "FROM calls p JOIN calls r USING (request_id) JOIN requests q USING (request_id) "
        "WHERE p.role = 'primary' AND r.role = 'replay'"
    ).fetchall()[0]
    con.close()
    assert joined[0] == N and joined[2] == N
    assert N * 0.75 <= joined[1] < N or joined[1] == N  # a retrained model mostly agrees

    report = divergence_with_replay_as_shadow(opts.out)
    (pair,) = report["pairs"]
    assert (pair["primary"], pair["shadow"], pair["n"], pair["unmatched"]) == (
        "fraud-v7", "fraud-v8", N, 0)
    assert pair["classes"]["n"] == N
    assert pair["classes"]["agreement"] == pytest.approx(joined[1] / N)


async def test_report_divergence_reads_replay_rows_directly(
    recorded: Path, models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    opts = options(recorded, models["candidate"].target, tmp_path)
    await replay(opts)
    con = open_source(db=opts.out)
    try:
        pairs = analyze_divergence(con, route=ROUTE).pairs
    finally:
        con.close()
    assert pairs and pairs[0].n == N


async def test_replay_against_the_primary_itself_agrees_exactly(
    recorded: Path, models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    opts = options(recorded, models["primary"].target, tmp_path, backend_name="fraud-v7b")
    await replay(opts)
    (pair,) = divergence_with_replay_as_shadow(opts.out)["pairs"]
    assert pair["n"] == N and pair["numeric"]["max_abs"] == 0.0
    assert pair["classes"]["agreement"] == 1.0


async def test_stop_after_some_then_resume_has_no_duplicates(
    recorded: Path, models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    slow = models["slow"]
    opts = options(recorded, slow.target, tmp_path, concurrency=2, flush_rows=3)
    stop = asyncio.Event()

    async def stop_after(n: int) -> None:
        for _ in range(2000):
            if slow.calls >= n:
                stop.set()  # what SIGINT does
                return
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(stop_after(10))
    first = await replay(opts, stop=stop)
    await watcher
    assert first.interrupted and 10 <= first.sent < N
    assert len(replay_rows(opts.out)) == first.sent

    limited = await replay(replace(opts, limit=5))
    assert (limited.already_done, limited.sent, limited.interrupted) == (first.sent, 5, False)
    rest = await replay(opts)
    assert rest.already_done == first.sent + 5
    assert rest.sent == N - first.sent - 5
    rows = replay_rows(opts.out)
    assert len(rows) == N and all(count == 1 for _, count in rows)
    con = duckdb.connect(opts.out, read_only=True)
    assert con.execute("SELECT count(*) FROM calls WHERE role = 'primary'").fetchall() == [(N,)]
    assert con.execute("SELECT count(*) FROM requests").fetchall() == [(N,)]
    con.close()


def test_requests_without_bytes_are_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "nobytes.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    con.execute(
        "INSERT INTO requests (request_id, ts, route, method) VALUES "
        "('a', now()::TIMESTAMP, ?, ?)", [ROUTE, ROUTE]
    ).fetchall()
    con.close()
    args = ["--from", str(db), "--route", ROUTE, "--to", "127.0.0.1:1", "--backend-name", "c",
            "--backend-version", "1", "--no-progress"]
    assert replay_main(args) == 2
    err = capsys.readouterr().err
    assert "record_bytes: true" in err and "1 recorded requests" in err
    # Issue 15.7: a source that cannot be read is 3 ("could not read the data"), not 2
    assert replay_main(["--from", str(tmp_path / "nope.duckdb"), *args[2:]]) == 3
    assert "no such file" in capsys.readouterr().err
    assert replay_main([*args[:3], "/x.S/M", *args[4:]]) == 2
    assert "routes recorded: " + ROUTE in capsys.readouterr().err
    with pytest.raises(ReplayInputError, match="run-id"):
        asyncio.run(replay(options(db, "127.0.0.1:1", tmp_path, run_id="bad id")))


@pytest.mark.slow
@pytest.mark.subprocess
async def test_sigint_interrupts_and_the_run_resumes(
    recorded: Path, models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    slow = models["slow"]
    out = tmp_path / "sig.duckdb"
    cmd = [sys.executable, "-m", "sidecar.replay", "--from", str(recorded), "--route", ROUTE,
           "--to", slow.target, "--backend-name", "fraud-v8", "--backend-version", "8",
           "--run-id", "sig", "--out", str(out), "--rate", "20", "--concurrency", "2",
           "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        for _ in range(600):  # until a few calls arrived, at most 30 s
            if slow.calls >= 5 or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert proc.returncode is None, "replay ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "resume with --run-id sig" in err.decode()
    done = len(replay_rows(str(out)))
    assert 5 <= done < N
    result = await replay(options(recorded, slow.target, tmp_path, run_id="sig", out=str(out)))
    assert result.already_done == done and result.sent == N - done
    rows = replay_rows(str(out))
    assert len(rows) == N and all(count == 1 for _, count in rows)


async def test_replay_from_a_parquet_export_with_bytes(
    recorded: Path, models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    from sidecar.export import ExportConfig, SegmentExporter

    fleet, copy = tmp_path / "fleet", tmp_path / "copy.duckdb"
    shutil.copy(recorded, copy)  # the export watermark lives in the file: export a twin too
    settings = ExportConfig(dir=str(fleet), replica="r1", include_bytes=True)
    SegmentExporter(settings, lambda: duckdb.connect(str(recorded)), str(recorded)).export_once()
    opts = options(fleet, models["candidate"].target, tmp_path, out=str(tmp_path / "pq.duckdb"))
    result = await replay(opts)
    assert (result.selected, result.sent, result.ok) == (N, N, N)
    (pair,) = divergence_with_replay_as_shadow(opts.out)["pairs"]
    assert pair["n"] == N and pair["unmatched"] == 0

    plain = tmp_path / "plain"
    SegmentExporter(ExportConfig(dir=str(plain), replica="r2"),
                    lambda: duckdb.connect(str(copy)), str(copy)).export_once()
    with pytest.raises(ReplayInputError, match="include_bytes"):
        await replay(options(plain, models["candidate"].target, tmp_path, run_id="r2"))
