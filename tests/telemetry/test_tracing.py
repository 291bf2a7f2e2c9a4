"""Traces: the span tree, W3C propagation to backends, recorded trace ids, OTLP export."""

from __future__ import annotations

import asyncio
import logging

import duckdb
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.app import Sidecar
from sidecar.config import parse_config
from tests.conftest import sidecar_config

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


async def _wait(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_span_tree_attributes_and_propagation(echo, tmp_path, channel_to) -> None:
    primary, shadow = await echo(), await echo()
    exporter = InMemorySpanExporter()
    db = tmp_path / "t.duckdb"
    loaded = parse_config(
        sidecar_config(
            db, {"p": primary.target, "s": shadow.target},
            [{"match": "/pkg.Model/*", "primary": "p", "shadows": [{"backend": "s"}]}],
        )
    )
    async with Sidecar(loaded, span_exporter=exporter) as sc:
        stub = channel_to(sc.port).unary_unary("/pkg.Model/Predict")
        call = stub(b"x", metadata=(("traceparent", TRACEPARENT), ("baggage", "tenant=acme")))
        await call
        request_id = dict(await call.trailing_metadata())["x-request-id"]
        await _wait(lambda: len(exporter.get_finished_spans()) == 3)
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(server) == 1 and len(clients) == 2
    srv = server[0]
    assert format(srv.context.trace_id, "032x") == CALLER_TRACE
    assert srv.parent is not None and format(srv.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert srv.attributes["rpc.system"] == "grpc"
    assert srv.attributes["rpc.service"] == "pkg.Model"
    assert srv.attributes["rpc.method"] == "Predict"
    assert srv.attributes["rpc.grpc.status_code"] == 0
    assert srv.attributes["server.port"] == sc.port
    assert srv.attributes["shadowcar.request_id"] == request_id
    by_role = {c.attributes["shadowcar.role"]: c for c in clients}
    assert set(by_role) == {"primary", "shadow"}
    for role, span in by_role.items():
        assert span.parent.span_id == srv.context.span_id
        assert span.context.trace_id == srv.context.trace_id
        assert span.attributes["shadowcar.shadow"] is (role == "shadow")
        assert span.attributes["rpc.method"] == "Predict"
    assert by_role["primary"].attributes["shadowcar.backend"] == "p"
    assert by_role["primary"].attributes["shadowcar.backend.version"] == "p-v1"
    assert by_role["shadow"].attributes["shadowcar.backend"] == "s"
    # Each backend received the caller's trace id, parented on its own client span.
    for backend, role in ((primary, "primary"), (shadow, "shadow")):
        md = dict(backend.seen_metadata[-1])
        _version, trace_id, parent_id, _ = md["traceparent"].split("-")
        assert trace_id == CALLER_TRACE
        assert parent_id == format(by_role[role].context.span_id, "016x")
        assert "tenant=acme" in md["baggage"]
    # The recorded request leads to its trace, and back.
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute(
        "SELECT trace_id, span_id FROM requests WHERE request_id = ?", [request_id]
    ).fetchall()
    con.close()
    assert row == [(CALLER_TRACE, format(srv.context.span_id, "016x"))]


async def test_error_status_is_on_the_spans(echo, tmp_path, channel_to) -> None:
    primary = await echo()
    exporter = InMemorySpanExporter()
    loaded = parse_config(
        sidecar_config(
            tmp_path / "e.duckdb", {"p": primary.target}, [{"match": "*", "primary": "p"}]
        )
    )
    async with Sidecar(loaded, span_exporter=exporter) as sc:
        stub = channel_to(sc.port).unary_unary("/a.B/C")
        try:
            await stub(b"x", metadata=(("x-echo-status", "NOT_FOUND"),))
        except grpc.aio.AioRpcError:
            pass
        await _wait(lambda: len(exporter.get_finished_spans()) == 2)
    for span in exporter.get_finished_spans():
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert not span.status.is_ok


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[object] = []

    async def Export(self, request, context):  # the proto's method name
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_a_real_otlp_grpc_receiver(echo, tmp_path, channel_to) -> None:
    collector = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        primary = await echo()
        data = sidecar_config(
            tmp_path / "o.duckdb", {"p": primary.target}, [{"match": "*", "primary": "p"}]
        )
        data["telemetry"] = {
            "traces": {"exporter": "otlp", "endpoint": f"http://127.0.0.1:{port}"}
        }
        async with Sidecar(parse_config(data)) as sc:
            stub = channel_to(sc.port).unary_unary("/a.B/C")
            for _ in range(5):
                await stub(b"x", metadata=(("traceparent", TRACEPARENT),))
        # Shutdown flushes the batch processor.
        assert len(collector.spans) == 10
        assert {s.trace_id.hex() for s in collector.spans} == {CALLER_TRACE}
        assert {s.name for s in collector.spans} >= {"a.B/C", "p a.B/C"}
    finally:
        await server.stop(0)


async def test_unreachable_collector_is_logged_once_and_serving_goes_on(
    echo, tmp_path, channel_to, caplog
) -> None:
    primary = await echo()
    gone = grpc.aio.server()
    dead_port = gone.add_insecure_port("127.0.0.1:0")  # bound, never started: refuses
    data = sidecar_config(
        tmp_path / "n.duckdb", {"p": primary.target}, [{"match": "*", "primary": "p"}]
    )
    data["telemetry"] = {
        "traces": {"exporter": "otlp", "endpoint": f"http://127.0.0.1:{dead_port}",
                   "max_queue_size": 64}
    }
    caplog.set_level(logging.WARNING, logger="sidecar.telemetry.tracing")
    async with Sidecar(parse_config(data)) as sc:
        stub = channel_to(sc.port).unary_unary("/a.B/C")
        answers = [await stub(str(i).encode()) for i in range(300)]
        assert answers == [str(i).encode() for i in range(300)]
        processor = sc.tracing.provider._active_span_processor._span_processors[0]
        # The queue is bounded: spans beyond it are dropped, not held.
        assert len(processor._batch_processor._queue) <= 64
    failing = [r for r in caplog.records if "trace export" in r.getMessage()]
    assert len(failing) == 1
    await gone.stop(0)


async def test_without_an_exporter_the_callers_trace_passes_through(echo, tmp_path,
                                                                    channel_to) -> None:
    primary = await echo()
    db = tmp_path / "plain.duckdb"
    loaded = parse_config(
        sidecar_config(db, {"p": primary.target}, [{"match": "*", "primary": "p"}])
    )
    async with Sidecar(loaded) as sc:
        assert sc.tracing.exporting is False
        stub = channel_to(sc.port).unary_unary("/a.B/C")
        await stub(b"x", metadata=(("traceparent", TRACEPARENT), ("x-request-id", "t1")))
        assert dict(primary.seen_metadata[-1])["traceparent"] == TRACEPARENT
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT trace_id, span_id FROM requests").fetchall()
    con.close()
    assert row == [(CALLER_TRACE, "00f067aa0ba902b7")]


async def test_standard_otel_environment_variables(echo, tmp_path, channel_to,
                                                   monkeypatch) -> None:
    """OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME and
    OTEL_TRACES_SAMPLER configure tracing without touching the config file."""
    names: list[str] = []

    class _Named(_Collector):
        async def Export(self, request, context):  # the proto's method name
            for rs in request.resource_spans:
                for attr in rs.resource.attributes:
                    if attr.key == "service.name":
                        names.append(attr.value.string_value)
            return await super().Export(request, context)

    collector = _Named()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fraud-sidecar")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    try:
        primary = await echo()
        loaded = parse_config(sidecar_config(
            tmp_path / "env.duckdb", {"p": primary.target}, [{"match": "*", "primary": "p"}]))
        async with Sidecar(loaded) as sc:
            assert sc.tracing.exporting
            await channel_to(sc.port).unary_unary("/a.B/C")(b"x")
        assert len(collector.spans) == 2
        assert set(names) == {"fraud-sidecar"}
    finally:
        await server.stop(0)


_OTEL_VARS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_SERVICE_NAME")


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT",
                                      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
async def test_an_otlp_endpoint_alone_exports_spans(echo, tmp_path, channel_to, monkeypatch,
                                                    variable) -> None:
    """Issue 17 (OpenTelemetry's own conventions): with the config's exporter unset, setting
    only the endpoint variable exports spans, as OTEL_TRACES_EXPORTER defaults to otlp."""
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    collector = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    monkeypatch.setenv(variable, f"http://127.0.0.1:{port}")
    try:
        primary = await echo()
        loaded = parse_config(sidecar_config(
            tmp_path / "ep.duckdb", {"p": primary.target}, [{"match": "*", "primary": "p"}]))
        assert loaded.config.telemetry.traces.exporter is None
        async with Sidecar(loaded) as sc:
            assert sc.tracing.exporting
            assert sc.tracing.export_target == f"otlp http://127.0.0.1:{port}"
            await channel_to(sc.port).unary_unary("/a.B/C")(b"x")
        # Shutdown flushes the batch processor: server and client span.
        assert len(collector.spans) == 2
    finally:
        await server.stop(0)


@pytest.mark.parametrize(("env", "traces", "expected"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, {"exporter": "none"}, "none"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
      "OTEL_TRACES_EXPORTER": "none"}, {}, "none"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
      "OTEL_TRACES_EXPORTER": "console,none"}, {}, "none"),
    ({}, {"exporter": "none", "endpoint": "http://127.0.0.1:4317"}, "none"),
    ({}, {"endpoint": "http://127.0.0.1:4317"}, "otlp http://127.0.0.1:4317"),
    ({}, {}, "none"),
    ({"OTEL_TRACES_EXPORTER": "console"}, {"exporter": "none"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, {"exporter": "console"}, "console"),
])
def test_which_exporter_is_built(monkeypatch, tmp_path, env, traces, expected) -> None:
    """Issue 17: an explicit `none` (config or OTEL_TRACES_EXPORTER) wins over an endpoint;
    an endpoint from the config alone enables OTLP too; nothing set exports nothing."""
    from sidecar.telemetry import Tracing

    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = sidecar_config(tmp_path / "k.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": "*", "primary": "p"}])
    data["telemetry"] = {"traces": traces}
    tracing = Tracing(parse_config(data).config.telemetry)
    try:
        assert tracing.export_target == expected
        assert tracing.exporting is (expected != "none")
    finally:
        tracing.shutdown()
