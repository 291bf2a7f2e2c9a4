"""SIGTERM under load: the sidecar drains, flushes every accepted record, and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import duckdb
import grpc
import pytest
import yaml

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_serving(port: int, proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"sidecar exited early with {proc.returncode}")
            try:
                await asyncio.wait_for(ch.channel_ready(), 0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError("sidecar did not start serving") from None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_under_load_loses_nothing(echo, tmp_path: Path, sig, figures) -> None:
    primary = await echo(delay_ms=2)
    shadow = await echo(delay_ms=30)
    port = _free_port()
    db = tmp_path / "drain.duckdb"
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": None},
        "storage": {"path": str(db), "flush_interval_ms": 5000},  # the final flush must do it
        "shutdown": {"grace_s": 5},
        "backends": [
            {"name": "p", "version": "1", "target": primary.target},
            {"name": "s", "version": "1", "target": shadow.target},
        ],
        "routes": [{"match": "*", "primary": "p", "shadows": [{"backend": "s"}]}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await _wait_serving(port, proc)
        answered: list[str] = []
        stop = asyncio.Event()

        async def client(n: int) -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = ch.unary_unary("/load.Test/Call")
                i = 0
                while not stop.is_set() and i < 2000:
                    rid = f"c{n}-{i}"
                    i += 1
                    try:
                        await stub(b"x", metadata=(("x-request-id", rid),), timeout=5)
                    except grpc.aio.AioRpcError:
                        return  # the server stopped accepting
                    answered.append(rid)

        clients = [asyncio.create_task(client(n)) for n in range(8)]
        await asyncio.sleep(1.0)
        assert answered, "no traffic got through before the signal"
        os.kill(proc.pid, sig)
        await asyncio.wait_for(asyncio.gather(*clients), 30)
        stop.set()
        code = await asyncio.wait_for(proc.wait(), 30)
        out = (await proc.stdout.read()).decode() if proc.stdout else ""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, out
    con = duckdb.connect(str(db), read_only=True)
    recorded = {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()}
    primary_calls = {
        r[0] for r in con.execute("SELECT request_id FROM calls WHERE role='primary'").fetchall()
    }
    shadow_calls = con.execute(
        "SELECT count(*), count(DISTINCT request_id) FROM calls WHERE role='shadow'"
    ).fetchall()[0]
    con.close()
    figures(sent=len(answered), answered=len(answered), fallbacks=0, errors=0,
            lost=len(set(answered) - recorded))
    assert set(answered) <= recorded
    assert set(answered) <= primary_calls
    # Every accepted request's shadow copy is recorded too (answered, or cut at its deadline).
    assert shadow_calls[0] == shadow_calls[1] == len(recorded)
    assert len(answered) > 50
