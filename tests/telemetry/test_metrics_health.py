"""Metrics equal the traffic sent; health, readiness and reflection tell the truth."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
from sidecar.telemetry.logs import JsonFormatter, current_request


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()


async def test_prometheus_counters_equal_the_traffic(echo, start_sidecar, channel_to) -> None:
    primary, shadow = await echo(), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target},
        [{"match": "*", "primary": "p", "shadows": [{"backend": "s"}]}],
    )
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    for _ in range(37):
        await stub(b"x")
    for _ in range(3):
        try:
            await stub(b"x", metadata=(("x-echo-status", "NOT_FOUND"),))
        except grpc.aio.AioRpcError:
            pass
    for _ in range(100):  # shadows finish and the writer feeds the histograms
        if sc.sink.stats.written["calls"] == 80:
            break
        await asyncio.sleep(0.05)
    status, text = await _get(sc.admin.port, "/metrics")
    assert status == 200
    s = _samples(text)
    base = (("backend", "p"), ("role", "primary"), ("route", "*"))
    assert s[("shadowcar_calls_total", tuple(sorted((*base, ("status", "OK")))))] == 37
    assert s[("shadowcar_calls_total", tuple(sorted((*base, ("status", "NOT_FOUND")))))] == 3
    assert s[("shadowcar_requests_total", (("route", "*"),))] == 40
    lane = (("route", "*"), ("shadow", "s"))
    assert s[("shadowcar_mirror_sent_total", lane)] == 40
    assert s[("shadowcar_mirror_dropped_total", lane)] == 0
    assert s[("shadowcar_mirror_errored_total", lane)] == 3
    assert s[("shadowcar_call_latency_ms_count", base)] == 40
    assert s[("shadowcar_sink_rows_written_total", (("table", "calls"),))] == 80
    assert ("shadowcar_sink_queue_depth", ()) in s
    for reason in ("buffer_full", "closing", "rejected", "unwritable"):
        assert s[("shadowcar_sink_rows_dropped_by_reason_total", (("reason", reason),))] == 0
    assert s[("shadowcar_sink_recoveries_total", ())] == 0


async def test_sink_drop_reasons_reach_prometheus(echo, start_sidecar, channel_to,
                                                  tmp_path) -> None:
    """Every drop reason of the sink is a Prometheus series, not only a /v1/stats field:
    a full buffer drops rows, and the metric says why."""
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}],
                             storage={"path": str(tmp_path / "small.duckdb"), "buffer_rows": 100,
                                      "batch_rows": 1_000_000, "flush_interval_ms": 60_000})
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    for _ in range(130):  # more than the buffer holds before the first flush
        await stub(b"x")
    status, text = await _get(sc.admin.port, "/metrics")
    assert status == 200
    s = _samples(text)
    full = sc.sink.stats.reasons["buffer_full"]
    assert full > 0
    assert s[("shadowcar_sink_rows_dropped_by_reason_total", (("reason", "buffer_full"),))] == full


async def test_model_health_gauges_from_real_models(start_sidecar, channel_to) -> None:
    model, retrained = make_demo_models()
    servers = [await start_model_server(model), await start_model_server(retrained)]
    try:
        sc = await start_sidecar(
            {"v1": servers[0].target, "v2": servers[1].target},
            [{"match": "*", "primary": "v1", "codec": "oip", "shadows": [{"backend": "v2"}]}],
        )
        stub = channel_to(sc.port).unary_unary("/inference.GRPCInferenceService/ModelInfer")
        import numpy as np

        rng = np.random.default_rng(1)
        feats = rng.standard_normal((200, model.n_features)).astype("float32")
        for row in feats:
            await stub(build_infer_request("demo", row))
        for _ in range(100):
            pairs = sc.health.pairs()
            if pairs and pairs[0]["pairs"] == 200:
                break
            await asyncio.sleep(0.05)
        pair = sc.health.pairs()[0]
        p1 = model.predict_proba(feats)
        p2 = retrained.predict_proba(feats)
        expected_agree = float(np.mean(p1.argmax(1) == p2.argmax(1)))
        expected_diff = float(np.mean(np.abs(p2[:, 1] - p1[:, 1])))
        assert pair["pairs"] == 200
        assert abs(pair["agreement"] - expected_agree) < 1e-12
        assert abs(pair["mean_abs_diff"] - expected_diff) < 1e-6
        _, text = await _get(sc.admin.port, "/metrics")
        s = _samples(text)
        labels = (("primary", "v1"), ("route", "*"), ("shadow", "v2"))
        assert abs(s[("shadowcar_pair_agreement", labels)] - expected_agree) < 1e-12
    finally:
        for server in servers:
            await server.aclose()


async def test_grpc_health_and_reflection(echo, start_sidecar, channel_to) -> None:
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}])
    ch = channel_to(sc.port)
    health = health_pb2_grpc.HealthStub(ch)
    for _ in range(100):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.05)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert primary.calls == 0  # the '*' route did not swallow the health service

    refl = reflection_pb2_grpc.ServerReflectionStub(ch)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for answer in refl.ServerReflectionInfo(requests()):
        names = [s.name for s in answer.list_services_response.service]
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names

    status, body = await _get(sc.admin.port, "/readyz")
    assert status == 200, body
    await sc.aclose()
    resp = None
    try:
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    except grpc.aio.AioRpcError as err:  # stopped serving entirely
        assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if resp is not None:
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_shutdown_says_not_serving_while_calls_drain(echo, start_sidecar,
                                                           channel_to) -> None:
    """On stop: health watchers hear NOT_SERVING and /readyz says draining while an in-flight
    call still finishes within the grace period."""
    slow = await echo(delay_ms=600)
    sc = await start_sidecar({"p": slow.target}, [{"match": "*", "primary": "p"}],
                             shutdown={"grace_s": 5})
    ch = channel_to(sc.port)
    health = health_pb2_grpc.HealthStub(ch)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await watch.read()
    while first.status != health_pb2.HealthCheckResponse.SERVING:  # until the primary is up
        first = await asyncio.wait_for(watch.read(), 5)
    in_flight = asyncio.ensure_future(ch.unary_unary("/m.S/P")(b"late"))
    await asyncio.sleep(0.1)  # the call is with the backend
    closing = asyncio.ensure_future(sc.aclose())
    update = await asyncio.wait_for(watch.read(), 5)
    assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()  # an open watch is an in-flight call too: it would hold the grace period
    status, body = await _get(sc.admin.port, "/readyz")
    assert status == 503 and "draining" in body
    assert not in_flight.done()
    assert await in_flight == b"late"  # drained, not cut off
    await closing


async def test_readiness_says_why_when_the_primary_is_down(echo, start_sidecar) -> None:
    gone = await echo()
    target = gone.target
    await gone.aclose()
    sc = await start_sidecar({"p": target}, [{"match": "*", "primary": "p"}])
    status, body = await _get(sc.admin.port, "/readyz")
    assert status == 503
    assert "primary backend not reachable" in json.loads(body)["reasons"][0]
    status, _ = await _get(sc.admin.port, "/healthz")
    assert status == 200


async def test_admin_config_hides_secrets(echo, start_sidecar) -> None:
    primary = await echo()
    sc = await start_sidecar(
        {"p": primary.target}, [{"match": "*", "primary": "p"}],
        admin={"listen": "127.0.0.1:0", "token": "s3cret-token"},
    )
    status, body = await _get(sc.admin.port, "/v1/config")
    assert status == 200
    assert "s3cret-token" not in body
    assert json.loads(body)["version"] == sc.loaded.version


def test_json_logs_carry_request_and_trace_ids() -> None:
    record = logging.LogRecord("sidecar.x", logging.WARNING, __file__, 1, "slow %s", ("p",), None)
    token = current_request.set(("rid-1", "ab" * 16))
    try:
        line = JsonFormatter().format(record)
    finally:
        current_request.reset(token)
    data = json.loads(line)
    assert data["message"] == "slow p"
    assert data["request_id"] == "rid-1"
    assert data["trace_id"] == "ab" * 16
    assert data["level"] == "WARNING"
