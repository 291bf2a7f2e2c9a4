"""Fixtures for outcome ingestion: DuckDB sinks on temp files, and real gRPC and HTTP servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import grpc
import pytest
from aiohttp import web

from sidecar._proto.shadowcar.v1 import feedback_pb2_grpc
from sidecar.config import StorageConfig
from sidecar.outcomes import OutcomeIngest, add_feedback_service, handle_post_outcomes
from sidecar.sink import DuckDBSink

OpenSink = Callable[[Path], DuckDBSink]
# The stub type (FeedbackAsyncStub) exists only in the generated .pyi.
StartFeedback = Callable[[OutcomeIngest], Awaitable[Any]]
StartHttp = Callable[..., Awaitable[str]]


def stored_outcomes(path: Path) -> list[tuple[Any, ...]]:
    """(event_id, unit_id, request_id, metric, value, epoch ts) rows of a closed file."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(
            "SELECT event_id, unit_id, request_id, metric, value, epoch(ts) "
            "FROM outcomes ORDER BY event_id"
        ).fetchall()
    finally:
        con.close()


@pytest.fixture
async def open_sink() -> AsyncIterator[OpenSink]:
    """Factory: an opened DuckDBSink on ``path``; every one is closed after the test."""
    sinks: list[DuckDBSink] = []

    def factory(path: Path) -> DuckDBSink:
        sink = DuckDBSink(StorageConfig(path=str(path), flush_interval_ms=20))
        sink.open()
        sinks.append(sink)
        return sink

    yield factory
    for sink in sinks:
        await sink.aclose()


@pytest.fixture
async def start_feedback() -> AsyncIterator[StartFeedback]:
    """Factory: a grpc.aio server on a free loopback port serving Feedback; returns a stub."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def factory(ingest: OutcomeIngest) -> Any:
        server = grpc.aio.server()
        servers.append(server)
        name = add_feedback_service(server, ingest)
        assert name == "shadowcar.v1.Feedback"
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return feedback_pb2_grpc.FeedbackStub(channel)

    yield factory
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(None)


@pytest.fixture
async def start_http() -> AsyncIterator[StartHttp]:
    """Factory: an aiohttp app on 127.0.0.1:0 with POST /v1/outcomes; returns its URL."""
    runners: list[web.AppRunner] = []

    async def factory(ingest: OutcomeIngest, **kwargs: Any) -> str:
        async def post_outcomes(request: web.Request) -> web.Response:
            return await handle_post_outcomes(request, ingest, **kwargs)

        app = web.Application()
        app.router.add_post("/v1/outcomes", post_outcomes)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/v1/outcomes"

    yield factory
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
