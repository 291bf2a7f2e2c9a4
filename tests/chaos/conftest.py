"""Helpers for chaos tests: a sidecar subprocess on free ports, with its admin API."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """``sidecar serve`` in a child process; always killed at the end of the test."""

    def __init__(self, config: dict[str, Any], tmp: Path,
                 preexec: Callable[[], None] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        config = dict(config, listen=f"127.0.0.1:{self.port}",
                      admin={"listen": f"127.0.0.1:{self.admin_port}"})
        self.config_path = tmp / f"sidecar-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = tmp / f"sidecar-{self.port}.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec,
        )

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"sidecar exited: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.admin_port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("sidecar not ready in time")

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.admin_port}{path}") as r:
                return r.status, await r.json()

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, sig: int | None = None) -> int:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code


@pytest.fixture
def sidecar_process(tmp_path):
    started: list[SidecarProcess] = []

    def factory(config: dict[str, Any], preexec=None) -> SidecarProcess:
        p = SidecarProcess(config, tmp_path, preexec)
        started.append(p)
        return p

    yield factory
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
        if not p._log.closed:
            p._log.close()


@pytest.fixture
def figures(request):
    """Record a scenario's measured figures; with SHADOWCAR_FIGURES=FILE set they are
    appended there as JSON lines (docs/reliability.md is written from them)."""
    import json
    import os

    def record(**values: Any) -> None:
        path = os.environ.get("SHADOWCAR_FIGURES")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"scenario": request.node.name, **values}) + "\n")

    return record
