"""Fixtures shared by the sidecar tests: echo backends and sidecars on free loopback ports."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.app import Sidecar
from sidecar.backends.echo_server import EchoServer, start_echo_server
from sidecar.config import parse_config

StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def echo() -> AsyncIterator[Callable[..., Awaitable[EchoServer]]]:
    """Factory for echo backends; every one started is closed after the test."""
    started: list[EchoServer] = []

    async def factory(**kwargs: Any) -> EchoServer:
        server = await start_echo_server(**kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.aclose()


def sidecar_config(
    db_path: Path,
    backends: dict[str, str],
    routes: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """A config dict on free ports, backends given as name -> target."""
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "storage": {"path": str(db_path), "flush_interval_ms": 50},
        "backends": [
            {"name": name, "version": f"{name}-v1", "target": target}
            for name, target in backends.items()
        ],
        "routes": routes,
    }
    override = extra.pop("backends_override", None)
    if override is not None:  # full backend entries (breakers, versions, ...)
        data["backends"] = override
    data.update(extra)
    return data


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms; AssertionError when it does not hold within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def start_sidecar(tmp_path: Path) -> AsyncIterator[StartSidecar]:
    """Factory: ``await start_sidecar(backends={...}, routes=[...])`` -> a started Sidecar."""
    running: list[Sidecar] = []

    async def factory(
        backends: dict[str, str], routes: list[dict[str, Any]], **extra: Any
    ) -> Sidecar:
        db = extra.pop("db_path", tmp_path / "sidecar.duckdb")
        loaded = parse_config(sidecar_config(db, backends, routes, **extra))
        sidecar = Sidecar(loaded)
        await sidecar.start()
        running.append(sidecar)
        return sidecar

    yield factory
    for sidecar in running:
        await sidecar.aclose()


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[int], grpc.aio.Channel]]:
    """Factory for client channels to a loopback port; closed after the test."""
    channels: list[grpc.aio.Channel] = []

    def factory(port: int) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(ch)
        return ch

    yield factory
    for ch in channels:
        await ch.close()


@pytest.fixture
def chromium() -> Callable[..., Any]:
    """Factory for a headless Chromium WebDriver (``chromium(width=1280)``); the test quits
    it. Skips where Debian chromium and chromium-driver are missing (.ci/run installs them)."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("needs Debian chromium and chromium-driver (.ci/run installs them)")

    def factory(width: int = 1280) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in ("--headless=new", f"--window-size={width},900", "--no-sandbox",
                     "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage"):
            options.add_argument(flag)
        return webdriver.Chrome(service=Service(driver), options=options)

    return factory
