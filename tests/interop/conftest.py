"""Interop fixtures: the interop virtualenv, trained models, and MLServer processes.

Everything that needs MLServer, scikit-learn or the Triton client runs as a subprocess of
``.venv-interop`` (built by ``scripts/interop_env.sh``); the tests skip when it is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sidecar._proto import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INTEROP_VENV = Path(os.environ.get("SHADOWCAR_INTEROP_VENV", ROOT / ".venv-interop"))
INTEROP_PYTHON = INTEROP_VENV / "bin" / "python"
MLSERVER = INTEROP_VENV / "bin" / "mlserver"
#: Longest an MLServer may take to load its model (cold imports on a busy machine).
STARTUP_S = 90.0
#: Longest a stopped MLServer gets before it is killed.
STOP_S = 5.0


def pytest_configure(config: pytest.Config) -> None:
    markers = config.getini("markers")
    if not any(str(m).startswith("interop:") for m in markers):
        config.addinivalue_line(
            "markers", "interop: runs MLServer and the Triton client from .venv-interop"
        )


def interop_missing() -> str | None:
    """Why the interop tests cannot run here, or None."""
    for needed in (INTEROP_PYTHON, MLSERVER):
        if not os.access(needed, os.X_OK):
            return f"{needed} is missing: run `bash scripts/interop_env.sh` to build .venv-interop"
    if not (INTEROP_VENV / ".installed").exists():
        return f"{INTEROP_VENV} is half built: run `bash scripts/interop_env.sh` again"
    return None


def free_port() -> int:
    """A loopback port free now (MLServer takes ports from its settings, not 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_interop(*args: str, timeout: float = 120) -> str:
    """Run ``.venv-interop/bin/python ARGS``; its stdout, or a failure showing stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(INTEROP_PYTHON), *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{args[0]} took longer than {timeout} s")
    if proc.returncode != 0:
        pytest.fail(f"{args[0]} exited {proc.returncode}:\n{err.decode()[-3000:]}")
    return out.decode()


@dataclass
class MLServerProcess:
    """One ``mlserver start`` serving a model directory on loopback ports."""

    folder: Path
    grpc_port: int
    http_port: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def wait_ready(self, model: str, timeout: float = STARTUP_S) -> None:
        """Poll ServerReady and ModelReady until both say yes; fail with the log if not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            while loop.time() < deadline:
                if self.proc.returncode is not None:
                    pytest.fail(f"mlserver exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    ready = await stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=1)
                    model_ready = await stub.ModelReady(
                        inference_pb2.ModelReadyRequest(name=model), timeout=1)
                    if ready.ready and model_ready.ready:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.25)
        pytest.fail(f"mlserver not ready within {timeout} s:\n{self.log_tail()}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


StartMLServer = Callable[[Path], Awaitable[MLServerProcess]]


@pytest.fixture
async def start_mlserver() -> AsyncIterator[StartMLServer]:
    """Factory: ``await start_mlserver(model_dir)`` -> a started (not yet ready) MLServer."""
    started: list[MLServerProcess] = []

    async def factory(folder: Path) -> MLServerProcess:
        grpc_port, http_port = free_port(), free_port()
        settings = {
            "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
            "metrics_endpoint": None, "parallel_workers": 0, "debug": False,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        log = folder / "mlserver.log"
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                str(MLSERVER), "start", str(folder), cwd=folder,
                stdout=sink, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        server = MLServerProcess(folder, grpc_port, http_port, proc, log)
        started.append(server)
        return server

    yield factory
    await asyncio.gather(*(server.stop() for server in started))
