"""`sidecar serve --workers 2`: both workers share the port, each records its own segment,
the admin API and analysis see them as one, and SIGTERM stops them all cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import grpc
import pytest
import yaml

from analysis.load import open_source
from tests.chaos.conftest import free_port

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


async def test_two_workers_are_one_sidecar(echo, tmp_path) -> None:
    primary = await echo()
    port, admin = free_port(), free_port()
    while admin + 1 == port:
        admin = free_port()
    db = tmp_path / "fleet.duckdb"
    config = {
        "listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin}"},
        "storage": {"path": str(db), "flush_interval_ms": 50},
        "backends": [{"name": "p", "version": "1", "target": primary.target}],
        "routes": [{"match": "*", "primary": "p"}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "sidecar", "serve", "--config", str(path), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{admin}/v1/stats") as r:
                        stats = await r.json()
                        if stats.get("workers_up") == 2:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            assert stats["workers_up"] == 2

            async def client(n: int) -> int:
                # One connection per client: SO_REUSEPORT spreads connections over workers.
                async with grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
                ) as ch:
                    stub = ch.unary_unary("/w.S/P")
                    for i in range(50):
                        await stub(b"x", metadata=(("x-request-id", f"c{n}-{i}"),))
                return 50

            sent = sum(await asyncio.gather(*(client(n) for n in range(8))))
            await asyncio.sleep(0.3)
            async with http.get(f"http://127.0.0.1:{admin}/v1/stats") as r:
                stats = await r.json()
            async with http.get(f"http://127.0.0.1:{admin}/metrics") as r:
                metrics = await r.text()
        assert stats["routes"][0]["requests"] == sent
        lines = [x for x in metrics.splitlines() if x.startswith("shadowcar_requests_total{")]
        assert {x.split('worker="')[1][0] for x in lines} == {"0", "1"}
        assert sum(float(x.rsplit(" ", 1)[1]) for x in lines) == sent
        assert metrics.count("# TYPE shadowcar_requests_total counter") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    segments = sorted(tmp_path.glob("fleet.w*.duckdb"))
    assert [s.name for s in segments] == ["fleet.w0.duckdb", "fleet.w1.duckdb"]
    con = open_source(db=str(tmp_path / "fleet.w*.duckdb"))
    n, distinct = con.execute(
        "SELECT count(*), count(DISTINCT request_id) FROM requests").fetchall()[0]
    per_worker = [
        r[0] for r in con.execute(
            "SELECT count(*) FROM calls GROUP BY config_version").fetchall()]
    con.close()
    assert n == distinct == sent  # nothing lost, nothing doubled
    assert sum(per_worker) == sent


def test_workers_refuse_what_needs_one_process(tmp_path) -> None:
    config = {
        "listen": "127.0.0.1:0",
        "backends": [{"name": "a", "version": "1", "target": "127.0.0.1:1"},
                     {"name": "b", "version": "1", "target": "127.0.0.1:2"}],
        "routes": [{"match": "*", "primary": "a",
                    "canary": {"stable": "a", "candidate": "b", "steps": [50]}}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    res = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--config", str(path),
                          "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "routes[0].canary" in res.stderr and "listen" in res.stderr
