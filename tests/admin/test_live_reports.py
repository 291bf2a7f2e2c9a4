"""Issue 15.6: analysis of a live sidecar. The commands a user types with ``--db FILE`` work
while a sidecar writes FILE (found through FILE.admin.json, answered by its admin API) and
give the numbers the stopped file gives; report work runs one at a time, off the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml

from sidecar.admin.live import discovery_path
from sidecar.admin.reports import MAX_WAITING, ReportsBusy
from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
from tests.conftest import sidecar_config

METHOD = "/inference.GRPCInferenceService/ModelInfer"
pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(300)]


@dataclass
class Live:
    sc: Sidecar
    db: Path
    config: Path
    data: dict[str, Any]


async def sidecar(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m sidecar ARGS`` in its own process; the event loop keeps serving meanwhile
    (the sidecar under test runs in this process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _traffic(sc: Sidecar, channel_to, n: int = 240) -> None:
    stub = channel_to(sc.port).unary_unary(METHOD)
    for row in np.random.default_rng(4).standard_normal((n, 8)):
        await stub(build_infer_request("demo", row))
    for _ in range(500):  # the shadow calls land after the answers
        if sc.sink.stats.accepted["calls"] >= 2 * n:
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(sc.sink.wait_flushed, 30.0)


@pytest.fixture
async def live(tmp_path: Path, channel_to) -> AsyncIterator[Live]:
    model, retrained = make_demo_models()
    servers = [await start_model_server(model), await start_model_server(retrained)]
    db = tmp_path / "live.duckdb"
    data = sidecar_config(
        db, {"v1": servers[0].target, "v2": servers[1].target},
        [{"match": METHOD, "primary": "v1", "codec": "oip", "shadows": [{"backend": "v2"}]}],
        storage={"path": str(db), "flush_interval_ms": 50},
    )
    data["triggers"] = [
        {"name": "v2-diverges", "kind": "divergence", "route": METHOD, "shadow": "v2",
         "max_disagreement": 0.01, "window_h": 1},
        {"name": "v2-quiet", "kind": "divergence", "route": METHOD, "shadow": "v2",
         "max_disagreement": 0.5, "window_h": 1},
        {"name": "v1-age", "kind": "age", "backend": "v1", "max_age_days": 30},
    ]
    data["triggers_every_s"] = 3600
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(data))
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        await _traffic(sc, channel_to)
        yield Live(sc, db, config, data)
    finally:
        await sc.aclose()
        for s in servers:
            await s.aclose()


async def test_commands_on_a_live_file_match_the_stopped_file(live: Live) -> None:
    """Issue 15.6: report, models, audit and check with --db on the file a sidecar writes
    (before: 'go through the admin API', DuckDB lock tracebacks, check exiting 1)."""
    db = str(live.db)
    found = json.loads(Path(discovery_path(db)).read_text())
    assert found["pid"] == os.getpid() and found["admin"].endswith(f":{live.sc.admin.port}")
    commands = {
        "divergence": ("report", "divergence", "--db", db, "--format", "json"),
        "drift": ("report", "drift", "--db", db, "--format", "json", "--since", "2000-01-01"),
        "fields": ("report", "fields", "--db", db, "--format", "json"),
        "html": ("report", "drift", "--db", db, "--format", "html", "--since", "2000-01-01"),
        "models": ("models", "--db", db, "--json"),
        "audit": ("audit", "--db", db, "--json"),
        "check": ("check", str(live.config), "--db", db, "--json"),
    }
    during = {name: await sidecar(*argv) for name, argv in commands.items()}
    for name, (code, _out, err) in during.items():
        assert code == (1 if name == "check" else 0), (name, err)
        assert "Traceback" not in err and "lock" not in err.lower(), (name, err)
    divergence = json.loads(during["divergence"][1])
    (pair,) = divergence["pairs"]
    assert pair["n"] == 240 and pair["shadow"] == "v2"
    assert during["html"][1].lstrip().lower().startswith("<!doctype html")
    assert "<svg" in during["html"][1]  # drawn by this process from the sidecar's JSON
    table = await sidecar("check", str(live.config), "--db", db)
    assert table[0] == 1
    assert "FIRED  v2-diverges" in table[1] and "1 of 3 triggers fired" in table[1]
    text_during = live.db.parent / "during.txt"  # a table to a file: unwrapped, as offline
    assert (await sidecar("report", "divergence", "--db", db, "-o", str(text_during)))[0] == 0

    await live.sc.aclose()  # the same commands on the stopped file
    assert not Path(discovery_path(db)).exists()
    after = {name: await sidecar(*argv) for name, argv in commands.items()}
    for name in ("divergence", "drift", "fields", "models", "audit"):
        assert after[name][0] == 0, after[name][2]
        assert json.loads(after[name][1]) == json.loads(during[name][1]), name
    assert after["html"][1] == during["html"][1]
    verdicts = [[(e["name"], e["fired"], e["message"]) for e in json.loads(run[1])]
                for run in (during["check"], after["check"])]
    assert verdicts[0] == verdicts[1] and after["check"][0] == 1
    text_after = live.db.parent / "after.txt"
    assert (await sidecar("report", "divergence", "--db", db, "-o", str(text_after)))[0] == 0
    assert text_during.read_text() == text_after.read_text()


async def test_admin_api_serves_reports(live: Live) -> None:
    """Issue 15.6: GET /v1/reports/{kind} in JSON, HTML and table; bad options are 400s."""
    base = f"http://127.0.0.1:{live.sc.admin.port}"
    async with aiohttp.ClientSession() as http:
        async def get(path: str, **query: str) -> tuple[int, str, str]:
            async with http.get(base + path, params=query) as resp:
                return resp.status, resp.content_type, await resp.text()

        status, ctype, body = await get("/v1/reports/divergence", format="json", atol="0.5")
        assert status == 200 and ctype == "application/json"
        report = json.loads(body)
        assert report["params"]["atol"] == 0.5 and report["pairs"][0]["n"] == 240
        status, ctype, body = await get("/v1/reports/drift", format="html")
        assert status == 200 and ctype == "text/html" and "<svg" in body
        status, ctype, body = await get("/v1/reports/divergence")
        assert status == 200 and ctype == "text/plain" and "v2" in body
        for path, query, needle in [
            ("/v1/reports/nope", {}, "invalid choice"),
            ("/v1/reports/divergence", {"db": "/etc/passwd"}, "unknown report option 'db'"),
            ("/v1/reports/divergence", {"since": "last tuesday"}, "ISO 8601"),
            ("/v1/reports/divergence", {"segment": "nope"}, "segment"),
            ("/v1/reports/experiment", {"weights": "a50"}, "--weights"),
            ("/v1/check", {"triggers": '[{"kind": "drift"}]'}, "triggers[0]"),
        ]:
            status, _, body = await get(path, **query)
            assert status == 400 and needle in json.loads(body)["error"], (path, body)
        status, _, body = await get("/v1/models")
        assert status == 200 and {m["backend"] for m in json.loads(body)["models"]} == {
            "v1", "v2"}
        status, _, body = await get("/v1/check")  # the sidecar's own triggers
        results = {r["name"]: r["fired"] for r in json.loads(body)["results"]}
        assert results == {"v2-diverges": True, "v2-quiet": False, "v1-age": False}


async def test_reports_run_one_at_a_time_off_the_loop(live: Live) -> None:
    """Issue 15.6: report work runs in one worker thread, never on the event loop; the ones
    waiting are bounded (429 beyond), and a client that leaves interrupts its query."""
    reports = live.sc.admin._reports
    loop_thread = threading.get_ident()
    release = threading.Event()
    seen: list[int] = []

    def blocking(cur: Any) -> int:
        seen.append(threading.get_ident())
        release.wait(60)
        return int(cur.execute("SELECT count(*) FROM calls").fetchone()[0])

    first = asyncio.create_task(reports.run(blocking))
    waiting = [asyncio.create_task(reports.run(blocking)) for _ in range(MAX_WAITING)]
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(ReportsBusy):
        await reports.run(blocking)
    async with aiohttp.ClientSession() as http:  # the loop answers while the report runs
        url = f"http://127.0.0.1:{live.sc.admin.port}/v1/reports/divergence"
        async with http.get(url, params={"format": "json"}) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"]
        async with http.get(f"http://127.0.0.1:{live.sc.admin.port}/healthz") as resp:
            assert resp.status == 200
    assert len(seen) == 1  # the others wait: one at a time
    release.set()
    counts = await asyncio.gather(first, *waiting)
    assert counts == [480] * (1 + MAX_WAITING)
    assert len(set(seen)) == 1 and loop_thread not in seen

    slow = asyncio.create_task(reports.run(
        lambda cur: cur.execute("SELECT count(*) FROM range(100000000000) a").fetchall()))
    await asyncio.sleep(0.5)
    slow.cancel()  # the client went away: its query is interrupted, the thread freed
    with pytest.raises(asyncio.CancelledError):
        await slow
    quick = await asyncio.wait_for(reports.run(
        lambda cur: cur.execute("SELECT 42").fetchone()[0]), timeout=30)
    assert quick == 42


async def test_locked_file_without_an_admin_api_exits_3(tmp_path: Path, echo) -> None:
    """Issue 15.6/15.7: a file another process locks, with no sidecar to ask, is 'could not
    read the data' (3) with a message, never a traceback and never 1."""
    primary = await echo()
    db = tmp_path / "noadmin.duckdb"
    data = sidecar_config(db, {"p": primary.target}, [{"match": "*", "primary": "p"}])
    data["admin"] = {"listen": None}
    config = tmp_path / "c.yaml"
    data["triggers"] = [{"name": "t", "kind": "divergence", "route": "*", "shadow": "p",
                         "max_disagreement": 0.1}]
    config.write_text(yaml.safe_dump(data))
    async with Sidecar(parse_config(data)):
        assert not Path(discovery_path(str(db))).exists()
        for argv in (("report", "divergence", "--db", str(db)), ("models", "--db", str(db)),
                     ("audit", "--db", str(db)), ("check", str(config), "--db", str(db))):
            code, _, err = await sidecar(*argv)
            assert code == 3, (argv, err)
            assert "no sidecar's admin API answers" in err and "Traceback" not in err


async def test_stale_discovery_file_is_ignored(tmp_path: Path, echo, channel_to) -> None:
    """A discovery file left by a crashed sidecar (dead pid) does not send a command
    anywhere: the stopped file is read as it is."""
    primary = await echo()
    db = tmp_path / "stale.duckdb"
    data = sidecar_config(db, {"p": primary.target}, [{"match": "*", "primary": "p"}])
    async with Sidecar(parse_config(data)) as sc:
        await channel_to(sc.port).unary_unary("/a.B/C")(b"x")
    Path(discovery_path(str(db))).write_text(json.dumps(
        {"admin": "http://127.0.0.1:9", "pid": 2 ** 22 + 12345, "db": str(db)}))
    code, out, err = await sidecar("models", "--db", str(db), "--json")
    assert code == 0, err
    assert json.loads(out)[0]["roles"]["primary"]["calls"] == 1


def test_every_report_option_travels_to_a_live_sidecar(tmp_path: Path) -> None:
    """Issue 15.6: the options a user gives `sidecar report` reach the live sidecar as they
    are, including any added later (the query is derived from the parser itself)."""
    import argparse

    from analysis.cli import add_report_parser, report_args, report_query

    contract = tmp_path / "c.yaml"
    contract.write_text(yaml.safe_dump({
        "name": "c", "version": "1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                                  "features": [{"name": "a", "range": [0, 1]},
                                                               {"name": "b", "range": [2, 3]}]}]}))
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command"))
    argv = ["report", "experiment", "--db", "x.duckdb", "--since", "24h", "--until",
            "2030-01-01", "--route", "/a.B/C", "--control", "ctl", "--weights", "ctl=1,t=2",
            "--sequential", "--cuped", "--winsorize", "0.99", "--atol", "0.5", "--rtol", "0.25",
            "--segment", "variant", "--metric", "clicks", "--quality-kind", "regression",
            "--window", "1h", "--ignore", "a.b", "--ignore", "c", "--format", "html",
            "--contract", str(contract), "-o", "out.html", "--memory-limit", "1GB"]
    given = parser.parse_args(argv)
    query = report_query(given)
    assert not {k for k, _ in query} & {"db", "output", "contract", "memory_limit"}
    sent = report_args("experiment", query)
    local = {"db", "parquet", "input", "output", "memory_limit", "contract", "help"}
    for name, value in vars(given).items():
        if name not in local:
            assert getattr(sent, name) == value, name
    assert sent.ranges == {"x[0]": (0.0, 1.0), "x[1]": (2.0, 3.0)}


async def test_wildcard_admin_address_with_a_token(tmp_path: Path, echo, channel_to) -> None:
    """Issue 15.6: an admin API on 0.0.0.0 with a token is found on loopback, and the
    command sends $SHADOWCAR_ADMIN_TOKEN (the discovery file holds no secret)."""
    primary = await echo()
    db = tmp_path / "wild.duckdb"
    data = sidecar_config(db, {"p": primary.target}, [{"match": "*", "primary": "p"}])
    data["admin"] = {"listen": "0.0.0.0:0", "token": "s3cret-token"}
    async with Sidecar(parse_config(data)) as sc:
        await channel_to(sc.port).unary_unary("/a.B/C")(b"x")
        await asyncio.to_thread(sc.sink.wait_flushed, 30.0)
        found = Path(discovery_path(str(db))).read_text()
        assert "127.0.0.1" in found and "s3cret" not in found
        code, out, err = await sidecar("models", "--db", str(db), "--json",
                                       env={"SHADOWCAR_ADMIN_TOKEN": "s3cret-token"})
        assert code == 0, err
        assert json.loads(out)[0]["roles"]["primary"]["calls"] == 1


async def test_glob_over_live_segments_exits_3(tmp_path: Path, echo) -> None:
    """Issue 15.6: a glob of --workers segments where one is live cannot be read as one
    (each live sidecar answers for its own file): exit 3 naming it; the one segment alone
    goes to its sidecar."""
    import duckdb

    from sidecar.sink.schema import migrate

    stopped = duckdb.connect(str(tmp_path / "seg.w1.duckdb"))
    migrate(stopped)
    stopped.close()
    primary = await echo()
    live_db = tmp_path / "seg.w0.duckdb"
    data = sidecar_config(live_db, {"p": primary.target}, [{"match": "*", "primary": "p"}])
    async with Sidecar(parse_config(data)):
        code, _, err = await sidecar("models", "--db", str(tmp_path / "seg.w*.duckdb"))
        assert code == 3 and "seg.w0.duckdb" in err and "one segment" in err, err
        code, _, err = await sidecar("models", "--db", str(live_db), "--json")
        assert code == 0, err
