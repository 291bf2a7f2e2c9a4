"""What goes wrong with a backend is said at once: the log, /v1/stats (the dashboard's source)
and the metrics carry the status and the backend's own message."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.models import BackendErrorLogConfig
from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
from sidecar.telemetry.backend_errors import BackendErrors

LOGGER = "sidecar.telemetry.backend_errors"
METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def test_a_shadow_under_another_model_name_is_shown_and_logged_at_once(
    start_sidecar, channel_to, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15.8 / issue 17 "Failure visible": a shadow answering NOT_FOUND for a model it
    does not serve shows the status and its message on /v1/stats and in the log after the
    first failure; the log stays rate-limited afterwards; metrics carry the error rate and the
    breaker state."""
    primary_model, _ = make_demo_models()
    shadow_model = dataclasses.replace(primary_model, name="fraud-gbm")
    async with (await start_model_server(primary_model) as primary,
                await start_model_server(shadow_model) as shadow):
        sc = await start_sidecar(
            {"fraud-lr": primary.target, "fraud-gbm": shadow.target},
            [{"match": METHOD, "primary": "fraud-lr", "codec": "oip",
              "shadows": [{"backend": "fraud-gbm"}]}],
        )
        infer = channel_to(sc.port).unary_unary(METHOD)
        payload = build_infer_request(primary_model.name, [[0.1] * 8])
        caplog.set_level(logging.INFO, logger=LOGGER)

        await infer(payload)  # one call: the first error must be visible already
        seen = None
        for _ in range(200):
            _, text = await _get(sc.admin.port, "/v1/stats")
            stats = json.loads(text)
            seen = {b["name"]: b for b in stats["backends"]}["fraud-gbm"]
            if seen["last_error"] is not None:
                break
            await asyncio.sleep(0.05)
        assert seen is not None and seen["last_error"] is not None
        last = seen["last_error"]
        assert last["status"] == "NOT_FOUND"
        assert repr(primary_model.name) in last["message"] and "not served here" in last["message"]
        assert last["role"] == "shadow" and last["route"] == METHOD and last["ts"] > 0
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1, lines
        assert "fraud-gbm" in lines[0] and "NOT_FOUND" in lines[0]
        assert "not served here" in lines[0] and "first error" in lines[0]

        for _ in range(60):  # 100 % failing: one line when the rate crosses, then quiet
            await infer(payload)
        for _ in range(200):
            if sc.backend_errors.snapshot()["fraud-gbm"]["calls"] == 61:
                break
            await asyncio.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 2, lines
        assert "error rate 100%" in lines[1] and "not served here" in lines[1]
        primary_view = {b["name"]: b for b in json.loads(
            (await _get(sc.admin.port, "/v1/stats"))[1])["backends"]}["fraud-lr"]
        assert primary_view["last_error"] is None and primary_view["errors"] == 0

        _, text = await _get(sc.admin.port, "/metrics")
        s = _samples(text)
        assert s[("shadowcar_backend_error_rate", (("backend", "fraud-gbm"),))] == 1.0
        assert s[("shadowcar_backend_errors_total", (("backend", "fraud-gbm"),))] == 61
        # NOT_FOUND is not a failure code of the breaker: it stays closed.
        assert s[("shadowcar_breaker_state", (("backend", "fraud-gbm"), ("state", "closed")))] == 1
        assert s[("shadowcar_breaker_state", (("backend", "fraud-gbm"), ("state", "open")))] == 0


async def test_an_open_breaker_and_canary_step_are_metrics(
    echo, start_sidecar, channel_to
) -> None:
    """Issue 15.8: metrics carry breaker state (a dead shadow's breaker opens) and the
    canary's step and state."""
    stable, cand = await echo(), await echo()
    sc = await start_sidecar(
        {"stable": stable.target, "cand": cand.target, "dead": "127.0.0.1:1"},
        [{"match": "/pkg.Model/*", "primary": "stable",
          "shadows": [{"backend": "dead", "timeout_ms": 2000}],
          "canary": {"stable": "stable", "candidate": "cand", "steps": [10, 50, 100],
                     "evaluation_interval_s": 3600}}],
        backends_override=[
            {"name": "stable", "version": "1", "target": stable.target},
            {"name": "cand", "version": "1", "target": cand.target},
            # a long cooldown: still open when a slow machine reads the metrics
            {"name": "dead", "version": "1", "target": "127.0.0.1:1",
             "breaker": {"cooldown_s": 600}},
        ],
    )
    stub = channel_to(sc.port).unary_unary("/pkg.Model/Predict")
    for i in range(20):
        await stub(b"x", metadata=(("x-request-id", f"r{i}"),))
    for _ in range(200):
        if (sc.backends["dead"].breaker.state == "open"
                and sc.backend_errors.snapshot().get("dead")):
            break
        await asyncio.sleep(0.05)
    _, text = await _get(sc.admin.port, "/metrics")
    s = _samples(text)
    assert s[("shadowcar_breaker_state", (("backend", "dead"), ("state", "open")))] == 1
    assert s[("shadowcar_breaker_state", (("backend", "dead"), ("state", "closed")))] == 0
    assert s[("shadowcar_breaker_state", (("backend", "stable"), ("state", "closed")))] == 1
    route = "/pkg.Model/*"
    assert s[("shadowcar_canary_step", (("route", route), ("steps", "3")))] == 1
    assert s[("shadowcar_canary_state", (("route", route), ("state", "running")))] == 1
    stats = json.loads((await _get(sc.admin.port, "/v1/stats"))[1])
    dead = {b["name"]: b for b in stats["backends"]}["dead"]
    assert dead["breaker"] == "open" and dead["last_error"]["status"] == "UNAVAILABLE"


def test_error_log_is_rate_limited_and_says_recovery(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 15.8: the first error at once; then one line when the rate crosses the threshold,
    none within the interval, one after it (counting what was not said), one on recovery."""
    now = [0.0]
    errors = BackendErrors(
        BackendErrorLogConfig(error_rate=0.5, window=10, min_calls=4, interval_s=60),
        clock=lambda: now[0],
    )
    caplog.set_level(logging.INFO, logger=LOGGER)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER]

    def call(status: str, message: str = "") -> None:
        errors.observe("m", "/r/*", "shadow", status, message, now[0])

    call("OK")
    call("UNAVAILABLE", "connection refused")
    assert len(lines()) == 1 and "first error" in lines()[0]
    assert "UNAVAILABLE: connection refused" in lines()[0]
    call("OK")
    call("DROPPED", "max_in_flight reached")  # not an answer of the backend: not counted
    call("CANCELLED", "cancelled at shutdown")
    assert errors.snapshot()["m"]["calls"] == 3
    call("NOT_FOUND", "no model x")  # 2 of 4 failed: the threshold is reached
    assert len(lines()) == 2 and "error rate 50%" in lines()[1] and "no model x" in lines()[1]
    for _ in range(5):
        now[0] += 1
        call("NOT_FOUND", "no model x")
    assert len(lines()) == 2  # within the interval: quiet
    now[0] += 60
    call("INTERNAL", "boom")
    assert len(lines()) == 3 and "6 errors since the last report" in lines()[2]
    assert "INTERNAL 1, NOT_FOUND 5" in lines()[2]
    for _ in range(10):
        call("OK")
    assert len(lines()) == 4 and "recovered" in lines()[3]
    assert caplog.records[-1].levelno == logging.INFO
    snap = errors.snapshot()["m"]
    assert snap["last_error"]["status"] == "INTERNAL" and snap["error_rate"] == 0.0
    assert errors.snapshot(["other"]) == {}
