"""Fallbacks, time budgets, breakers, load shedding and message limits with real servers."""

from __future__ import annotations

import asyncio
import json
import time

import duckdb
import grpc
import numpy as np
import pytest

from sidecar._proto import inference_pb2 as pb
from sidecar.config import load_config, parse_config
from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
from sidecar.errors import ConfigError
from tests.conftest import sidecar_config

METHOD = "/inference.GRPCInferenceService/ModelInfer"
STATIC = {"model_name": "fallback", "outputs": [
    {"name": "probabilities", "datatype": "FP32", "shape": ["1", "2"],
     "contents": {"fp32_contents": [0.5, 0.5]}}]}


async def test_static_fallback_when_the_primary_is_down(start_sidecar, channel_to, echo,
                                                        tmp_path) -> None:
    gone = await echo()
    target = gone.target
    await gone.aclose()
    static = tmp_path / "fallback.json"
    static.write_text(json.dumps(STATIC))
    db = tmp_path / "fb.duckdb"
    sc = await start_sidecar(
        {"p": target},
        [{"match": METHOD, "primary": "p", "codec": "oip", "timeout_ms": 2000,
          "fallback": {"static": str(static)}}],
        db_path=db,
    )
    stub = channel_to(sc.port).unary_unary(METHOD)
    answer = await stub(build_infer_request("demo", np.zeros(8)))
    decoded = pb.ModelInferResponse.FromString(answer)
    assert decoded.model_name == "fallback"
    assert list(decoded.outputs[0].contents.fp32_contents) == [0.5, 0.5]
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT role, backend, served, status, error, output FROM calls ORDER BY role"
    ).fetchall()
    con.close()
    assert rows[0][:4] == ("fallback", "static", True, "OK")
    assert rows[0][4].startswith("fallback after UNAVAILABLE")
    assert rows[0][5] == [0.5, 0.5]  # decoded like any answer
    assert rows[1][:4] == ("primary", "p", False, "UNAVAILABLE")


async def test_backend_fallback_fits_the_callers_deadline(start_sidecar, channel_to, echo,
                                                          tmp_path) -> None:
    primary, backup = await echo(hang=True), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "b": backup.target},
        [{"match": "*", "primary": "p", "timeout_ms": 5000,
          "fallback": {"backend": "b", "timeout_ms": 300}}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    t0 = time.perf_counter()
    assert await stub(b"payload", timeout=1.0) == b"payload"
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0  # answered by the backup inside the caller's 1 s
    assert backup.calls == 1
    # The primary got the caller's budget minus the fallback's reserve, not the route's 5 s.
    assert primary.seen_time_remaining[-1] < 0.75
    assert sc.stats()["routes"][0]["fallbacks"] == 1


async def test_caller_errors_never_fall_back(start_sidecar, channel_to, echo) -> None:
    primary, backup = await echo(), await echo()
    sc = await start_sidecar(
        {"p": primary.target, "b": backup.target},
        [{"match": "*", "primary": "p", "fallback": {"backend": "b"}}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(b"x", metadata=(("x-echo-status", "INVALID_ARGUMENT"),))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert backup.calls == 0


def test_invalid_fallbacks_are_rejected_at_load(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"outputs": [{"name": 3, "nonsense": True}]}))
    data = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": METHOD, "primary": "p", "codec": "oip",
                            "fallback": {"static": "bad.json"}}])
    (tmp_path / "c.yaml").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")  # relative to the config file
    assert info.value.problems[0][0] == "routes[0].fallback.static"
    assert "ModelInferResponse" in info.value.problems[0][1]
    data["routes"][0]["fallback"] = {"backend": "p", "codes": ["INVALID_ARGUMENT"]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert [p for p, _ in info.value.problems] == ["routes[0].fallback.codes[0]"]
    data["routes"][0]["fallback"] = {"backend": "p"}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == [("routes[0].fallback.backend", "must differ from the primary")]


async def test_breaker_fails_fast_then_probes_and_heals(start_sidecar, channel_to, echo) -> None:
    primary = await echo()
    sc = await start_sidecar(
        {"p": primary.target},
        [{"match": "*", "primary": "p"}],
        backends_override=[{"name": "p", "version": "1", "target": primary.target,
                   "breaker": {"consecutive_failures": 3, "cooldown_s": 0.3}}],
    )
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    down = (("x-echo-status", "UNAVAILABLE"),)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub(b"x", metadata=down)
    assert primary.calls == 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(b"x")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "circuit open" in info.value.details()
    assert primary.calls == 3  # refused without calling the backend
    await asyncio.sleep(0.35)
    assert await stub(b"probe") == b"probe"  # half-open probe succeeds and closes it
    assert await stub(b"again") == b"again"
    assert primary.calls == 5


async def test_load_shedding_at_the_route_cap(start_sidecar, channel_to, echo, tmp_path) -> None:
    primary = await echo(delay_ms=300)
    db = tmp_path / "shed.duckdb"
    sc = await start_sidecar({"p": primary.target},
                             [{"match": "*", "primary": "p", "max_concurrent": 2}], db_path=db)
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    results = await asyncio.gather(*(stub(b"x") for _ in range(5)), return_exceptions=True)
    ok = [r for r in results if r == b"x"]
    shed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 2 and len(shed) == 3
    for err in shed:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 concurrent calls" in err.details()
    assert primary.peak_in_flight == 2
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    statuses = sorted(r[0] for r in con.execute("SELECT status FROM requests").fetchall())
    con.close()
    assert statuses == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED",
                        "RESOURCE_EXHAUSTED"]


async def test_message_size_limit_has_a_clear_status(start_sidecar, channel_to, echo) -> None:
    primary = await echo()
    sc = await start_sidecar({"p": primary.target}, [{"match": "*", "primary": "p"}],
                             max_message_bytes=4096)
    stub = channel_to(sc.port).unary_unary("/m.S/P")
    assert await stub(b"x" * 1000) == b"x" * 1000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub(b"x" * 10_000)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    assert primary.calls == 1


async def test_fallback_on_real_models_keeps_answers_valid(start_sidecar, channel_to) -> None:
    model, retrained = make_demo_models()
    flaky = await start_model_server(model, fail_rate=0.5, seed=3)
    backup = await start_model_server(retrained)
    try:
        sc = await start_sidecar(
            {"p": flaky.target, "b": backup.target},
            [{"match": METHOD, "primary": "p", "codec": "oip",
              "fallback": {"backend": "b"}}],
            backends_override=[{"name": "p", "version": "1", "target": flaky.target,
                       "breaker": {"enabled": False}},
                      {"name": "b", "version": "2", "target": backup.target}],
        )
        stub = channel_to(sc.port).unary_unary(METHOD)
        x = np.random.default_rng(0).standard_normal((40, 8)).astype("float32")
        for row in x:
            answer = pb.ModelInferResponse.FromString(await stub(build_infer_request("demo", row)))
            assert answer.model_version in ("1", "2")
        routes = sc.stats()["routes"][0]
        assert 5 < routes["fallbacks"] < 35 and routes["errors"] == {}
    finally:
        await flaky.aclose()
        await backup.aclose()
