"""Issue 15.1: every reload sequence of a canary, as one table over a real sidecar (real
model servers on loopback, a real DuckDB file). After each reload (or restart) the canary is
in the state the supervisor's rule says, and it is evaluated again: its looks grow and a
decision is made (for a paused or rolled-back canary, once it is resumed or restarted)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.app import Sidecar
from sidecar.assignment import UnitKey
from sidecar.config import parse_config
from sidecar.demo.models import make_demo_models, start_model_server
from tests.canary.traffic import METHOD, canary_config, canary_spec, drive, wait_for

pytestmark = pytest.mark.slow

#: Looks hold for an hour per step unless traffic passes a gate test: the state only moves
#: when a case moves it.
BASE = canary_spec(step_min_duration_s=3600)
RELAXED = canary_spec(step_min_duration_s=3600,
                      guardrails={**BASE["guardrails"], "error_rate_margin": 0.2})
NEW_STEPS = canary_spec(step_min_duration_s=3600, steps=[10, 50, 100])
NEW_CANDIDATE = canary_spec(step_min_duration_s=3600, candidate="candidate2")
GATED = canary_spec(approval_before=[50])
GATED_RELAXED = canary_spec(approval_before=[50],
                            guardrails={**BASE["guardrails"], "error_rate_margin": 0.2})
GATE_GONE = canary_spec()
ROUTE_UNIT = {k: v for k, v in BASE.items() if k != "unit"}  # the canary uses the route's


@dataclass(frozen=True)
class Case:
    """Start with ``before``, do ``setup``, reload (or restart) to ``after``, check."""

    before: dict[str, Any] | None
    setup: tuple[str, ...]
    after: dict[str, Any] | None
    expect: tuple[str, int] | None  # (state, step index) right after; None: no canary
    audit: str | None  # what the reload wrote to the audit log (None: nothing new)
    restart: bool = False  # stop the sidecar and start one on ``after`` (same file)
    then: str | None = None  # the action after which looks must resume
    after_then: tuple[str, int] | None = field(default=None)
    unit_before: dict[str, Any] | None = None  # the route's unit setting
    unit_after: dict[str, Any] | None = None


CASES = {
    "add": Case(None, (), BASE, ("running", 0), "canary.start"),
    "change a guardrail": Case(BASE, ("promote",), RELAXED, ("running", 1),
                               "canary.reconfigure"),
    "change the steps": Case(BASE, ("promote",), NEW_STEPS, ("running", 0),
                             "canary.reconfigure"),
    "change the candidate": Case(BASE, ("promote",), NEW_CANDIDATE, ("running", 0),
                                 "canary.start"),
    "change the route's unit": Case(ROUTE_UNIT, ("promote",), ROUTE_UNIT, ("running", 1),
                                    None, unit_before={"metadata": "x-user-id"},
                                    unit_after={"metadata": "x-session-id"}),
    "remove": Case(BASE, ("promote",), None, None, "canary.remove"),
    "re-add after remove": Case(BASE, ("promote", "rollback", "remove"), BASE,
                                ("running", 0), "canary.start"),
    "while rolled back (relax a guardrail)": Case(
        BASE, ("rollback",), RELAXED, ("rolled_back", 0), "canary.reconfigure",
        then="restart", after_then=("running", 0)),
    "while paused": Case(BASE, ("promote", "pause"), RELAXED, ("paused", 1),
                         "canary.reconfigure", then="resume", after_then=("running", 1)),
    "while waiting for approval": Case(GATED, ("gate",), GATED_RELAXED,
                                       ("awaiting_approval", 0), "canary.reconfigure"),
    "while waiting, the gate removed": Case(GATED, ("gate",), GATE_GONE, ("running", 0),
                                            "canary.reconfigure"),
    "across a restart, unchanged": Case(BASE, ("promote",), BASE, ("running", 1), None,
                                        restart=True),
    "across a restart, guardrail changed": Case(BASE, ("promote",), RELAXED, ("running", 1),
                                                "canary.reconfigure", restart=True),
    "across a restart, rolled back": Case(BASE, ("rollback",), BASE, ("rolled_back", 0), None,
                                          restart=True, then="restart",
                                          after_then=("running", 0)),
}


async def _setup(sc: Sidecar, data: dict[str, Any], steps: tuple[str, ...]) -> None:
    for step in steps:
        if step == "gate":  # traffic until the evidence says promote and the gate holds it
            await drive(sc, lambda: sc.canaries[METHOD].state.state == "awaiting_approval")
            assert sc.canaries[METHOD].state.state == "awaiting_approval"
        elif step == "remove":
            route = data["routes"][0]
            without = {k: v for k, v in route.items() if k != "canary"}
            assert await sc.reload(parse_config({**data, "routes": [without]}),
                                   actor="qa", reason="remove")
            assert sc.canaries == {}
        else:
            await sc.canaries[METHOD].act(step, "qa", f"setup: {step}")


async def _looked_again(sc: Sidecar) -> None:
    """The controller now routing the canary is evaluated: its looks grow, with a decision."""
    controller = sc.canaries[METHOD]
    start = controller.evaluations
    assert await wait_for(lambda: controller.evaluations >= start + 2), controller.status()
    assert sc.canaries[METHOD] is controller  # still the one the routing table uses
    decision = controller.state.last_decision
    assert decision is not None and decision["decision"] in ("hold", "promote", "gate")


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
async def test_reload_sequence(case: Case, tmp_path: Path) -> None:
    model, _ = make_demo_models()
    servers = [await start_model_server(model) for _ in range(3)]
    backends = dict(zip(("stable", "candidate", "candidate2"), (s.target for s in servers),
                        strict=True))
    db = tmp_path / "canary.duckdb"
    before = canary_config(db, backends, case.before, case.unit_before)
    after = canary_config(db, backends, case.after, case.unit_after)
    sc = Sidecar(parse_config(before))
    try:
        await sc.start()
        await _setup(sc, before, case.setup)
        seen = {r["ts"] for r in await _audit(sc)}
        if case.restart:
            await sc.aclose()
            sc = Sidecar(parse_config(after))
            await sc.start()
        else:
            assert await sc.reload(parse_config(after), actor="qa", reason="the case")
        if case.expect is None:
            assert sc.canaries == {} and not sc.canary._tasks
        else:
            state = sc.canaries[METHOD].state
            assert (state.state, state.step_index) == case.expect, sc.canaries[METHOD].status()
            assert sc.canaries[METHOD].unit == UnitKey.of(
                parse_config(after).config.routes[0].canary.unit or
                parse_config(after).config.routes[0].unit)  # the unit it is configured with
        new = [r for r in await _audit(sc) if r["ts"] not in seen
               and r["action"].startswith("canary.")]
        assert [r["action"] for r in new] == ([case.audit] if case.audit else []), new
        if case.then is not None:
            await sc.canary.act(METHOD, case.then, "qa", "try again")
            state = sc.canaries[METHOD].state
            assert (state.state, state.step_index) == case.after_then
        if case.expect is not None:
            await _looked_again(sc)
        else:  # nothing is left evaluating the removed canary
            assert [p.canary for p in sc.route_plans()] == [None]
    finally:
        await sc.aclose()
        for s in servers:
            await s.aclose()


async def _audit(sc: Sidecar) -> list[dict[str, Any]]:
    import asyncio

    rows = await asyncio.to_thread(sc.read_audit, 1000)
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else None
    return rows
