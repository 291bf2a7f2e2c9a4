"""What the canary tests share: a canary config over real model servers, traffic from
distinct users until a condition holds (bounded), waits on a live controller, audit rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np

from sidecar.app import Sidecar
from sidecar.demo.models import build_infer_request
from tests.conftest import sidecar_config

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def canary_spec(**overrides: Any) -> dict[str, Any]:
    """A canary that decides fast: 0.1 s between looks, small steps, lax latency."""
    spec: dict[str, Any] = {
        "stable": "stable", "candidate": "candidate", "steps": [20, 50, 100],
        "step_min_duration_s": 0.2, "step_min_requests": 60, "evaluation_interval_s": 0.1,
        "unit": {"metadata": "x-user-id"},
        "guardrails": {"error_rate_margin": 0.05, "max_disagreement": 0.2,
                       # Latency is judged in test_guardrails; here every server shares
                       # one loaded event loop, so a p99 ratio would only measure noise.
                       "max_latency_p99_ratio": 1000, "min_latency_samples": 50},
    }
    spec.update(overrides)
    return spec


def canary_config(db: Path, backends: dict[str, str], spec: dict[str, Any] | None,
                  unit: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A sidecar config with one OIP route (its ``unit``), with the canary ``spec``
    (None: none)."""
    route: dict[str, Any] = {"match": METHOD, "primary": "stable", "codec": "oip"}
    if unit is not None:
        route["unit"] = unit
    if spec is not None:
        route["canary"] = spec
    return sidecar_config(db, backends, [route],
                          storage={"path": str(db), "flush_interval_ms": 20}, **extra)


async def drive(sc: Sidecar, until: Callable[[], bool], max_requests: int = 6000,
                budget_s: float = 60) -> int:
    """Send requests from distinct users until ``until()`` holds (bounded)."""
    rng = np.random.default_rng(3)
    payloads = [build_infer_request("demo", rng.standard_normal(8)) for _ in range(64)]
    sent = 0
    deadline = time.monotonic() + budget_s
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
        stub = ch.unary_unary(METHOD)

        async def one(i: int) -> None:
            try:
                await stub(payloads[i % 64], metadata=(("x-user-id", f"user-{i}"),), timeout=5)
            except grpc.aio.AioRpcError:
                pass

        while sent < max_requests and time.monotonic() < deadline and not until():
            await asyncio.gather(*(one(sent + k) for k in range(20)))
            sent += 20
    return sent


async def wait_for(cond: Callable[[], bool], budget_s: float = 30) -> bool:
    """Poll ``cond`` until it holds or the budget is spent (generous: a loaded machine)."""
    deadline = time.monotonic() + budget_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def audit_rows(db: Path) -> list[tuple[str, str, str]]:
    """(action, actor, detail) of a stopped sidecar's audit table, oldest first."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT action, actor, detail FROM audit ORDER BY ts").fetchall()
    finally:
        con.close()
