"""Canaries end to end with real model servers: automatic rollback, promotion through every
step to primary, resume after restart, and every decision in the audit table."""

from __future__ import annotations

import json

import aiohttp
import duckdb
import pytest

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.demo.models import make_demo_models, start_model_server
from tests.canary.traffic import METHOD, audit_rows, canary_config, canary_spec, drive, wait_for

pytestmark = pytest.mark.slow


def _config(db, stable: str, candidate: str, **canary) -> dict:
    return canary_config(db, {"stable": stable, "candidate": candidate},
                         canary_spec(**canary))


_drive = drive
_audit = audit_rows


async def test_failing_candidate_is_rolled_back(tmp_path) -> None:
    model, _ = make_demo_models()
    stable = await start_model_server(model)
    bad = await start_model_server(model, fail_rate=0.2, seed=5)
    db = tmp_path / "rollback.duckdb"
    try:
        sc = Sidecar(parse_config(_config(db, stable.target, bad.target)))
        await sc.start()
        canary = sc.canaries[METHOD]
        sent = await _drive(sc, lambda: canary.state.state == "rolled_back")
        assert canary.state.state == "rolled_back", canary.status()
        decision = canary.state.last_decision
        assert decision["decision"] == "rollback"
        assert any("error rate" in r for r in decision["reasons"])
        # Rollback set the share to 0 at once: the candidate serves nobody now.
        calls_before = bad.calls
        await _drive(sc, lambda: False, max_requests=100)
        assert bad.calls == calls_before
        assert canary.share == 0
        await sc.aclose()
    finally:
        await stable.aclose()
        await bad.aclose()
    actions = [a for a, _, _ in _audit(db)]
    assert actions[0] == "canary.start" and "canary.rollback" in actions
    assert sent < 6000


async def test_healthy_candidate_is_promoted_to_primary(tmp_path) -> None:
    model, _ = make_demo_models()
    stable = await start_model_server(model)
    good = await start_model_server(model)
    db = tmp_path / "promote.duckdb"
    try:
        sc = Sidecar(parse_config(_config(db, stable.target, good.target)))
        await sc.start()
        canary = sc.canaries[METHOD]
        seen_steps = set()

        def done() -> bool:
            seen_steps.add(canary.state.step_index)
            return canary.state.state == "promoted"

        await _drive(sc, done)
        assert canary.state.state == "promoted", canary.state.last_decision
        assert seen_steps >= {0, 1, 2}
        # After the last step the candidate is the primary for everyone.
        stable_before = stable.calls
        await _drive(sc, lambda: False, max_requests=60)
        assert stable.calls == stable_before
        await sc.aclose()
    finally:
        await stable.aclose()
        await good.aclose()
    rows = _audit(db)
    promotions = [json.loads(d) for a, actor, d in rows if a == "canary.promote"]
    assert len(promotions) == 3
    assert [p["new"]["step_index"] for p in promotions] == [1, 2, 2]
    assert promotions[-1]["new"]["state"] == "promoted"
    con = duckdb.connect(str(db), read_only=True)
    roles = dict(con.execute(
        "SELECT role, count(*) FROM calls WHERE served GROUP BY role").fetchall())
    con.close()
    assert roles.get("canary", 0) > 0 and roles.get("stable", 0) > 0
    assert roles.get("primary", 0) >= 60  # the promoted candidate as primary


async def test_restart_mid_canary_resumes_and_manual_actions_are_audited(tmp_path) -> None:
    model, _ = make_demo_models()
    stable = await start_model_server(model)
    cand = await start_model_server(model)
    db = tmp_path / "resume.duckdb"
    data = _config(db, stable.target, cand.target, step_min_duration_s=3600)
    data["admin"]["token"] = "t0ken"
    try:
        sc = Sidecar(parse_config(data))
        await sc.start()
        base = f"http://127.0.0.1:{sc.admin.port}/v1/canaries/"
        route = METHOD.replace("/", "%2F")
        async with aiohttp.ClientSession() as http:
            async with http.post(base + route + "/promote", json={"reason": "x"}) as resp:
                assert resp.status == 401  # no token
            auth = {"Authorization": "Bearer t0ken"}
            async with http.post(base + route + "/promote", json={"reason": "looks good"},
                                 headers=auth) as resp:
                assert resp.status == 200
                assert (await resp.json())["step_index"] == 1
            async with http.post(base + route + "/pause", json={"reason": "lunch"},
                                 headers=auth) as resp:
                assert resp.status == 200
            async with http.post(base + route + "/resume", json={"reason": "back"},
                                 headers=auth) as resp:
                assert resp.status == 200
            async with http.post(base + route + "/resume", json={}, headers=auth) as resp:
                assert resp.status == 409  # not paused
            async with http.post(base + "%2Fno.Such%2FRoute/promote", json={},
                                 headers=auth) as resp:
                assert resp.status == 404
        await sc.aclose()

        again = Sidecar(parse_config(data))
        await again.start()
        status = again.canaries[METHOD].status()
        assert (status["state"], status["step_index"], status["share"]) == ("running", 1, 0.5)
        await again.aclose()
    finally:
        await stable.aclose()
        await cand.aclose()
    actions = [(a, actor) for a, actor, _ in _audit(db)]
    assert ("canary.promote", "127.0.0.1") in actions
    assert [a for a, _ in actions if a.startswith("canary.")] == [
        "canary.start", "canary.promote", "canary.pause", "canary.resume"
    ]


async def test_review_gate_holds_until_approved(tmp_path) -> None:
    model, _ = make_demo_models()
    stable = await start_model_server(model)
    cand = await start_model_server(model)
    db = tmp_path / "gate.duckdb"
    data = _config(db, stable.target, cand.target, approval_before=[50],
                   approve_promotion=True)
    try:
        sc = Sidecar(parse_config(data))
        await sc.start()
        canary = sc.canaries[METHOD]
        await _drive(sc, lambda: canary.state.state == "awaiting_approval")
        assert (canary.state.state, canary.state.step_index) == ("awaiting_approval", 0)
        assert canary.share == 20  # the share holds at the gate
        await _drive(sc, lambda: False, max_requests=200)
        assert canary.state.state == "awaiting_approval"  # more evidence does not pass it
        status = sc.stats()["routes"][0]["canary"]
        assert status["state"] == "awaiting_approval"
        with pytest.raises(ValueError):
            await canary.act("resume", "qa", "no")
        await canary.act("approve", "alice", "reviewed the divergence report")
        assert (canary.state.state, canary.state.step_index) == ("running", 1)
        await _drive(sc, lambda: canary.state.state == "awaiting_approval")
        assert canary.state.step_index == 2  # at 100%, the promotion itself is gated
        await canary.act("approve", "bob", "ship it")
        assert canary.state.state == "promoted"
        await sc.aclose()
    finally:
        await stable.aclose()
        await cand.aclose()
    actions = [(a, actor) for a, actor, _ in _audit(db)]
    assert ("canary.gate", "controller") in actions
    assert ("canary.approve", "alice") in actions and ("canary.approve", "bob") in actions


async def test_rolled_back_canary_stays_so_across_a_reload_until_restarted(tmp_path) -> None:
    """Issue 15.1/15.3, as reported: a canary rolls itself back, a reload relaxes one
    guardrail. A reload never undoes a rollback (the status says so, share 0); a restart
    is a fresh attempt at step 1 that is evaluated again with the relaxed guardrail."""
    model, _ = make_demo_models()
    stable = await start_model_server(model)
    bad = await start_model_server(model, fail_rate=0.2, seed=5)
    db = tmp_path / "relax.duckdb"
    data = _config(db, stable.target, bad.target)
    relaxed = _config(db, stable.target, bad.target,
                      guardrails={**canary_spec()["guardrails"], "error_rate_margin": 0.5})
    try:
        sc = Sidecar(parse_config(data))
        await sc.start()
        await _drive(sc, lambda: sc.canaries[METHOD].state.state == "rolled_back")
        assert sc.canaries[METHOD].state.state == "rolled_back"
        assert await sc.reload(parse_config(relaxed), actor="qa", reason="relax")
        canary = sc.canaries[METHOD]
        assert (canary.state.state, canary.share) == ("rolled_back", 0)
        await sc.canary.act(METHOD, "restart", "qa", "margin relaxed")
        canary = sc.canaries[METHOD]
        assert (canary.state.state, canary.state.step_index, canary.share) == ("running", 0, 20)
        looks = canary.evaluations
        await _drive(sc, lambda: canary.evaluations >= looks + 3, max_requests=2000)
        assert await wait_for(lambda: canary.evaluations >= looks + 3)
        assert canary.state.last_decision["decision"] in ("hold", "promote")
        assert canary.state.state != "rolled_back"  # the relaxed margin is the one judged
        await sc.aclose()
    finally:
        await stable.aclose()
        await bad.aclose()
    actions = [a for a, _, _ in _audit(db) if a.startswith("canary.")]
    assert actions[:4] == ["canary.start", "canary.rollback", "canary.reconfigure",
                           "canary.restart"]
