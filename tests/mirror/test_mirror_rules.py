"""Issue 18.2: one set of shadow rules for unary calls and server streams.

Dropped copies leave a DROPPED row and a span; no exception but a cancellation leaves a
shadow task (a copy that breaks on our side is an INTERNAL row).
"""

from __future__ import annotations

import asyncio
from typing import Any

import duckdb
import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.app import Sidecar
from sidecar.config import parse_config
from tests.conftest import sidecar_config


class _Backend(grpc.GenericRpcHandler):
    """Echoes a unary call; a server stream of the request twice."""

    def service(self, details: Any) -> Any:
        if details.method.endswith("/Stream"):
            async def stream(request: bytes, context: Any) -> Any:
                yield request
                yield request

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: Any) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
async def targets():
    servers = []
    for _ in range(2):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([_Backend()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append((server, f"127.0.0.1:{port}"))
    yield [t for _, t in servers]
    for server, _ in servers:
        await server.stop(0)


@pytest.mark.parametrize("kind", ["unary", "server"])
async def test_a_broken_copy_is_an_internal_row_and_escapes_no_task(
    kind, targets, start_sidecar, channel_to, tmp_path
) -> None:
    """Issue 18.2: a non-gRPC exception in a shadow copy (here: the shadow's channel is
    closed under it) ends as an INTERNAL row and a counted error, never as a task's
    exception (server streams let it escape before)."""
    db = tmp_path / "broken.duckdb"
    method = "/m.S/Stream" if kind == "server" else "/m.S/Predict"
    sc = await start_sidecar(
        {"p": targets[0], "s": targets[1]},
        [{"match": method, "primary": "p", "streaming": kind,
          "shadows": [{"backend": "s", "timeout_ms": 5000}]}],
        db_path=db,
    )
    await sc.backends["s"].aclose()
    ch = channel_to(sc.port)
    if kind == "server":
        assert [m async for m in ch.unary_stream(method)(b"x")] == [b"x", b"x"]
    else:
        assert await ch.unary_unary(method)(b"x") == b"x"
    tasks = set(sc.mirror.tasks)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    assert all(t.done() and (t.cancelled() or t.exception() is None) for t in tasks)
    lane = sc.stats()["routes"][0]["shadows"]["s"]
    assert (lane["sent"], lane["errored"], lane["in_flight"]) == (1, 1, 0)
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT status, error FROM calls WHERE role = 'shadow'").fetchall()
    con.close()
    assert len(rows) == 1 and rows[0][0] == "INTERNAL" and rows[0][1], rows


async def test_a_dropped_copy_has_a_row_and_a_span(echo, channel_to, tmp_path) -> None:
    """Issue 18.2: a copy dropped at max_in_flight leaves a DROPPED row and a span."""
    primary, shadow = await echo(), await echo(delay_ms=300)
    exporter = InMemorySpanExporter()
    db = tmp_path / "dropped.duckdb"
    loaded = parse_config(sidecar_config(
        db, {"p": primary.target, "s": shadow.target},
        [{"match": "*", "primary": "p",
          "shadows": [{"backend": "s", "max_in_flight": 1, "timeout_ms": 5000}]}],
    ))
    async with Sidecar(loaded, span_exporter=exporter) as sc:
        stub = channel_to(sc.port).unary_unary("/m.S/P")
        await asyncio.gather(*(stub(b"x") for _ in range(3)))
        lane = sc.stats()["routes"][0]["shadows"]["s"]
        assert lane["dropped"] == 2 and lane["sent"] == 1
    con = duckdb.connect(str(db), read_only=True)
    dropped = con.execute(
        "SELECT error FROM calls WHERE role = 'shadow' AND status = 'DROPPED'"
    ).fetchall()
    con.close()
    assert dropped == [("max_in_flight reached",)] * 2
    shadow_spans = [s for s in exporter.get_finished_spans()
                    if (s.attributes or {}).get("shadowcar.role") == "shadow"]
    assert len(shadow_spans) == 3
    failed = [s for s in shadow_spans if not s.status.is_ok]
    assert len(failed) == 2 and all(s.status.description == "max_in_flight reached"
                                    for s in failed)
