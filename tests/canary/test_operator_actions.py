"""Issue 15.2-15.4: what an operator does to a canary, through the admin API and the
command line of a real sidecar: review gates hold for a manual promote (a forced one needs a
reason and is audited), a rolled-back canary is restarted, a promoted one says which config
change completes it and stays promoted across restarts until the config changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.demo.models import make_demo_models, start_model_server
from sidecar.errors import ConfigError
from tests.canary.traffic import METHOD, audit_rows, canary_config, canary_spec, wait_for

pytestmark = pytest.mark.slow
ROUTE = urllib.parse.quote(METHOD, safe="")


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, str]]:
    model, _ = make_demo_models()
    servers = [await start_model_server(model) for _ in range(2)]
    yield {"stable": servers[0].target, "candidate": servers[1].target}
    for s in servers:
        await s.aclose()


async def _post(sc: Sidecar, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    assert sc.admin is not None
    url = f"http://127.0.0.1:{sc.admin.port}/v1/canaries/{ROUTE}/{action}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def _cli(sc: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    assert sc.admin is not None
    argv = [sys.executable, "-m", "sidecar", *args, "--admin",
            f"http://127.0.0.1:{sc.admin.port}"]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   timeout=60, check=False)


async def test_manual_promote_stops_at_review_gates(backends, tmp_path: Path) -> None:
    """Issue 15.2: with ``approval_before: [50]`` a manual promote from 20% is refused; only
    ``--force`` with a reason passes a gate, and the override is audited."""
    db = tmp_path / "gate.duckdb"
    spec = canary_spec(step_min_duration_s=3600, approval_before=[50], approve_promotion=True)
    sc = Sidecar(parse_config(canary_config(db, backends, spec)))
    await sc.start()
    try:
        status, body = await _post(sc, "promote", {"reason": "looks fine"})
        assert status == 409 and "review gate" in body["error"], body
        assert sc.canaries[METHOD].share == 20  # nothing moved
        status, body = await _post(sc, "promote", {"force": True})
        assert status == 400 and "reason" in body["error"]
        status, body = await _post(sc, "promote", {"force": "yes", "reason": "x"})
        assert status == 400
        status, body = await _post(sc, "pause", {"force": True, "reason": "x"})
        assert status == 400  # only a promote can be forced

        res = await _cli(sc, "canary", "promote", METHOD, "--reason", "no gate?")
        assert res.returncode != 0 and "review gate" in res.stderr, res
        res = await _cli(sc, "canary", "promote", METHOD, "--force",
                         "--reason", "incident fix must ship tonight")
        assert res.returncode == 0, res.stderr
        assert "step 2/3" in res.stdout and "at 50%" in res.stdout
        res = await _cli(sc, "canary", "pause", METHOD, "--force", "--reason", "x")
        assert res.returncode == 2

        status, body = await _post(sc, "promote", {"reason": "50 -> 100 is not gated"})
        assert status == 200 and body["step_index"] == 2
        # The final promotion is gated too (approve_promotion).
        status, body = await _post(sc, "promote", {"reason": "done?"})
        assert status == 409 and "final promotion" in body["error"]
        status, body = await _post(sc, "promote", {"force": True, "reason": "signed off"})
        assert status == 200 and body["state"] == "promoted"
    finally:
        await sc.aclose()
    rows = audit_rows(db)
    forced = [(actor, json.loads(detail)) for action, actor, detail in rows
              if action == "canary.force_promote"]
    assert len(forced) == 2
    assert [d["new"]["step_index"] for _, d in forced] == [1, 2]
    assert forced[0][1]["new"]["last_decision"]["reasons"] == ["incident fix must ship tonight"]
    assert [a for a, _, _ in rows if a.startswith("canary.")] == [
        "canary.start", "canary.force_promote", "canary.promote", "canary.force_promote"]


def test_the_first_step_cannot_be_gated(tmp_path: Path) -> None:
    """Issue 15.2 (sibling): a start or restart enters the first step at once, so a gate on
    it could never hold; the config says so instead of ignoring it."""
    data = canary_config(tmp_path / "x.duckdb", {"stable": "127.0.0.1:1",
                                                 "candidate": "127.0.0.1:2"},
                         canary_spec(approval_before=[20]))
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "first step" in str(info.value)


async def test_restart_after_rollback(backends, tmp_path: Path) -> None:
    """Issue 15.3: after a rollback, ``sidecar canary restart ROUTE --reason`` is a fresh
    attempt from step 1 (audited) and the canary is evaluated again."""
    db = tmp_path / "restart.duckdb"
    sc = Sidecar(parse_config(canary_config(db, backends, canary_spec(
        step_min_duration_s=3600))))
    await sc.start()
    try:
        await sc.canary.act(METHOD, "promote", "qa", "to 50")
        status, body = await _post(sc, "rollback", {"reason": "p99 regression"})
        assert status == 200 and body["share"] == 0
        status, body = await _post(sc, "resume", {"reason": "again"})
        assert status == 409 and "restart" in body["error"]
        status, body = await _post(sc, "restart", {})
        assert status == 400 and "reason" in body["error"]
        res = await _cli(sc, "canary", "status", METHOD)
        assert "sidecar canary restart" in res.stdout, res
        res = await _cli(sc, "canary", "restart", METHOD, "--reason", "fixed the slow path")
        assert res.returncode == 0, res.stderr
        assert "running, step 1/3" in res.stdout and "at 20%" in res.stdout
        controller = sc.canaries[METHOD]
        assert await wait_for(lambda: controller.evaluations >= 2)
    finally:
        await sc.aclose()
    rows = audit_rows(db)
    restart = [json.loads(d) for a, _, d in rows if a == "canary.restart"]
    assert len(restart) == 1
    assert restart[0]["old"]["state"] == "rolled_back"
    assert (restart[0]["new"]["state"], restart[0]["new"]["step_index"]) == ("running", 0)


async def test_promoted_canary_says_what_to_change(backends, tmp_path: Path) -> None:
    """Issue 15.4: once promoted, status says the canary is complete and shows the YAML to
    apply; the promoted state survives restarts (also with other settings) until the config
    stops naming the canary; the change it shows is a valid config that serves the
    candidate as primary."""
    db = tmp_path / "promoted.duckdb"
    data = canary_config(db, backends, canary_spec(step_min_duration_s=3600))
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        for _ in range(3):
            await sc.canary.act(METHOD, "promote", "qa", "manual climb")
        status = sc.canaries[METHOD].status()
        assert status["complete"] is True and status["state"] == "promoted"
        res = await _cli(sc, "canary", "status", METHOD)
        assert res.returncode == 0 and "complete" in res.stdout
        assert "primary: candidate    # was stable" in res.stdout
        change = yaml.safe_load(status["config_change"])
    finally:
        await sc.aclose()
    relaxed = canary_config(db, backends, canary_spec(
        step_min_duration_s=3600, guardrails={"error_rate_margin": 0.3}))
    for config in (data, relaxed):  # a restart, and a restart with other guardrails
        sc = Sidecar(parse_config(config))
        await sc.start()
        try:
            assert sc.canaries[METHOD].state.state == "promoted"
            assert sc.canaries[METHOD].share == 100
        finally:
            await sc.aclose()

    assert change == {"routes": [{"match": METHOD, "primary": "candidate"}]}
    applied = json.loads(json.dumps(data))
    route = applied["routes"][0]
    del route["canary"]
    route.update(change["routes"][0])
    sc = Sidecar(parse_config(relaxed))
    await sc.start()
    try:
        assert await sc.reload(parse_config(applied), actor="qa", reason="promotion applied")
        assert sc.canaries == {}
        assert sc.route_plans()[0].primary.name == "candidate"
    finally:
        await sc.aclose()
    sc = Sidecar(parse_config(data))  # the canary configured again: a new attempt
    await sc.start()
    try:
        assert (sc.canaries[METHOD].state.state, sc.canaries[METHOD].share) == ("running", 20)
    finally:
        await sc.aclose()
    actions = [a for a, _, _ in audit_rows(db) if a.startswith("canary.")]
    assert actions == ["canary.start", *["canary.promote"] * 3, "canary.reconfigure",
                       "canary.remove", "canary.start"]
