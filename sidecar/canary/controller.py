"""The canary controller: traffic share by unit hash, a scheduled guardrail evaluation, and
manual actions — every decision persisted and audited.

States: ``running`` (climbing steps), ``paused`` (share frozen, no evaluation),
``awaiting_approval`` (the evidence says promote but the next step is a review gate: the
share holds, guardrails still roll back, ``approve`` continues), ``rolled_back`` (share 0 at
once: the stable serves everyone; ``restart`` is a fresh attempt from step 1),
``promoted`` (after the last step: the candidate is the route's primary, and the status
shows the config change that makes it so for good).

A review gate holds for every path up: a scheduled evaluation stops at it, a manual
``promote`` is refused (409) unless forced with a reason, which is audited as
``force_promote``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from sidecar.assignment import Decision, UnitKey, bucket
from sidecar.backends import Metadata
from sidecar.canary.guardrails import Evaluation, Evidence, gather_evidence, judge
from sidecar.config.experiments import CanaryConfig

__all__ = [
    "ACTIONS", "Action", "CanaryController", "CanaryState", "Persist", "State", "next_is_gated",
]

log = logging.getLogger(__name__)

State = Literal["running", "paused", "awaiting_approval", "rolled_back", "promoted"]
Action = Literal["promote", "rollback", "pause", "resume", "approve", "restart"]
ACTIONS: tuple[Action, ...] = ("promote", "rollback", "pause", "resume", "approve", "restart")


@dataclass(frozen=True)
class CanaryState:
    """What survives a restart."""

    state: State
    step_index: int
    step_started: float
    last_decision: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "step_index": self.step_index,
            "step_started": self.step_started,
            "last_decision": self.last_decision,
        }


#: Writes a state change: (route, old, new, actor, action, reason) -> None.
Persist = Callable[[str, CanaryState | None, CanaryState, str, str, str], None]


def next_is_gated(config: CanaryConfig, step_index: int) -> bool:
    """Is the move after ``step_index`` (next step, or the final promotion) behind a gate?"""
    if step_index + 1 >= len(config.steps):
        return config.approve_promotion
    return config.steps[step_index + 1] in config.approval_before
#: Evidence for (route, candidate, stable, since, stable_since) from the live recording.
EvidenceSource = Callable[[str, str, str, float, float], Awaitable[Evidence]]


class CanaryController:
    """One route's canary; ``decide`` runs on the hot path, ``run`` is its owned task."""

    def __init__(
        self,
        route: str,
        config: CanaryConfig,
        route_unit: UnitKey,
        *,
        persist: Persist,
        evidence: EvidenceSource,
        restored: CanaryState | None = None,
        on_hold: Callable[[str, dict[str, Any]], None] | None = None,
        evaluations: int = 0,
    ) -> None:
        self._on_hold = on_hold
        self.route = route
        self.config = config
        self.unit = UnitKey.of(config.unit) if config.unit is not None else route_unit
        self.salt = config.salt or f"canary:{route}"
        self._persist = persist
        self._evidence = evidence
        self._lock = asyncio.Lock()
        if restored is not None and restored.step_index >= len(config.steps):
            restored = replace(restored, step_index=len(config.steps) - 1)
        self.state = restored or CanaryState("running", 0, time.time())
        self._threshold = self._compute_threshold()
        #: Scheduled looks that reached a verdict (carried over when a reload keeps state).
        self.evaluations = evaluations

    # -- hot path ------------------------------------------------------------------
    @property
    def share(self) -> float:
        """Percent of units the candidate serves now."""
        s = self.state
        if s.state == "rolled_back":
            return 0.0
        if s.state == "promoted":
            return 100.0
        return self.config.steps[s.step_index]

    def _compute_threshold(self) -> int:
        return round(self.share * 100)

    def decide(self, metadata: Metadata, request: bytes, request_id: str) -> Decision:
        state = self.state.state
        cfg = self.config
        if state == "promoted":
            return Decision(cfg.candidate, "primary", None, None, None, False)
        if state == "rolled_back":
            return Decision(cfg.stable, "primary", None, None, None, False)
        unit = self.unit.extract(metadata, request, request_id)
        if unit is None:
            return Decision(cfg.stable, "primary", None, None, None, False)
        if bucket(self.salt, unit) < self._threshold:
            return Decision(cfg.candidate, "canary", unit, "canary", "canary", True)
        return Decision(cfg.stable, "stable", unit, "canary", "stable", True)

    # -- state changes -------------------------------------------------------------
    def _apply(self, new: CanaryState, actor: str, action: str, reason: str) -> None:
        old = self.state
        self.state = new
        self._threshold = self._compute_threshold()
        self._persist(self.route, old, new, actor, action, reason)
        log.info("canary %s: %s by %s (%s) -> %s at %.0f%%", self.route, action, actor,
                 reason, new.state, self.share)

    def _gated(self) -> bool:
        return next_is_gated(self.config, self.state.step_index)

    def _next_share(self) -> str:
        s = self.state
        if s.step_index + 1 >= len(self.config.steps):
            return "the final promotion"
        return f"{self.config.steps[s.step_index + 1]:g}%"

    def _advance(
        self, evaluation: dict[str, Any], actor: str, reason: str, action: str = "promote"
    ) -> None:
        s = self.state
        if s.step_index + 1 >= len(self.config.steps):
            self._apply(replace(s, state="promoted", last_decision=evaluation), actor,
                        action, reason)
        else:
            state: State = "running" if s.state == "awaiting_approval" else s.state
            self._apply(CanaryState(state, s.step_index + 1, time.time(), evaluation), actor,
                        action, reason)

    async def act(
        self, action: Action, actor: str, reason: str, *, force: bool = False
    ) -> CanaryState:
        """A manual action from the admin API; raises ValueError when not allowed now.

        ``force`` only matters to ``promote``: it passes a review gate (with a reason)."""
        async with self._lock:
            s = self.state
            manual: dict[str, Any] = {"decision": action, "reasons": [reason or "manual"],
                                      "actor": actor}
            if action == "restart":
                # A fresh attempt: step 1, a new step clock, the evidence window restarts.
                self._apply(CanaryState("running", 0, time.time(), manual), actor, action,
                            reason)
                return self.state
            if s.state in ("rolled_back", "promoted") and action != "rollback":
                hint = " (restart starts a fresh attempt)" if s.state == "rolled_back" else ""
                raise ValueError(f"canary is {s.state}; {action} does nothing{hint}")
            if action == "rollback":
                if s.state == "rolled_back":
                    raise ValueError("canary is already rolled back")
                self._apply(replace(s, state="rolled_back", last_decision=manual), actor,
                            action, reason)
            elif action == "promote":
                if self._gated() and not force:
                    raise ValueError(
                        f"{self._next_share()} is behind a review gate: approve it when "
                        "the canary waits for approval, or promote with force and a reason"
                    )
                if self._gated():
                    if not reason.strip():
                        raise ValueError("a forced promote needs a reason")
                    manual["decision"] = "force_promote"
                    self._advance(manual, actor, f"review gate overridden: {reason}",
                                  "force_promote")
                else:
                    self._advance(manual, actor, reason)
            elif action == "pause":
                if s.state == "paused":
                    raise ValueError("canary is already paused")
                self._apply(replace(s, state="paused", last_decision=manual), actor, action,
                            reason)
            elif action == "approve":
                if s.state != "awaiting_approval":
                    raise ValueError("canary is not waiting for an approval")
                self._advance(manual, actor, reason, "approve")
            elif action == "resume":
                if s.state != "paused":
                    raise ValueError("canary is not paused")
                self._apply(replace(s, state="running", step_started=time.time(),
                                    last_decision=manual), actor, action, reason)
            else:
                raise ValueError(f"unknown action {action!r}")
            return self.state

    async def evaluate(self) -> Evaluation | None:
        """One scheduled look: gather evidence, judge, and act on the verdict."""
        async with self._lock:
            s = self.state
            if s.state not in ("running", "awaiting_approval"):
                return None
            stable_since = s.step_started if self.share < 100 else 0.0
            evidence = await self._evidence(
                self.route, self.config.candidate, self.config.stable, s.step_started,
                stable_since,
            )
            if self.state is not s:  # changed while we were reading
                return None
            result = judge(evidence, self.config, elapsed_s=time.time() - s.step_started,
                           share=self.share)
            self.evaluations += 1
            summary = result.to_dict()
            reason = "; ".join(result.reasons)
            if result.decision == "rollback":
                self._apply(replace(s, state="rolled_back", last_decision=summary),
                            "controller", "rollback", reason)
            elif result.decision == "promote" and s.state == "awaiting_approval":
                self.state = replace(s, last_decision={**summary, "decision": "hold",
                                                       "reasons": ["waiting for approval"]})
            elif result.decision == "promote" and self._gated():
                gated = {**summary, "decision": "gate",
                         "reasons": [f"{reason}; a human must approve the next step"]}
                self._apply(replace(s, state="awaiting_approval", last_decision=gated),
                            "controller", "gate", "review gate: approval needed")
            elif result.decision == "promote":
                self._advance(summary, "controller", reason)
            else:
                self.state = replace(s, last_decision=summary)
                if self._on_hold is not None:
                    self._on_hold(self.route, summary)
            return result

    async def run(self) -> None:
        """The owned evaluation loop; ends when cancelled (its owner awaits it)."""
        while True:
            await asyncio.sleep(self.config.evaluation_interval_s)
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed look must not end the canary
                log.exception("canary %s: evaluation failed", self.route)

    def status(self) -> dict[str, Any]:
        s = self.state
        out = {
            "route": self.route,
            "stable": self.config.stable,
            "candidate": self.config.candidate,
            "steps": list(self.config.steps),
            "share": self.share / 100,
            "evaluations": self.evaluations,
            "evaluation_interval_s": self.config.evaluation_interval_s,
            "complete": s.state == "promoted",
            "next_gated": s.state not in ("promoted", "rolled_back") and self._gated(),
            **s.to_dict(),
        }
        if s.state == "promoted":
            out["config_change"] = promotion_change(self.route, self.config)
        return out


def promotion_change(route: str, config: CanaryConfig) -> str:
    """The YAML edit that makes a promoted candidate the route's primary for good (the
    promoted state is kept until the config stops naming this canary)."""
    return (
        "routes:\n"
        f"  - match: {json.dumps(route)}\n"
        f"    primary: {config.candidate}    # was {config.stable}\n"
        "    # canary: delete the whole block: the rollout is complete\n"
    )


def evidence_from(cursor_factory: Callable[[], Any]) -> EvidenceSource:
    """An :data:`EvidenceSource` over a DuckDB cursor factory, run in a worker thread."""

    async def source(
        route: str, candidate: str, stable: str, since: float, stable_since: float
    ) -> Evidence:
        def query() -> Evidence:
            cur = cursor_factory()
            try:
                return gather_evidence(cur, route, candidate, stable, since, stable_since)
            finally:
                cur.close()

        return await asyncio.to_thread(query)

    return source
