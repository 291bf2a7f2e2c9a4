"""One owner for every route's canary: its controller, its evaluation task, what survives a
reload or a restart. Replacing a controller is one operation (old task cancelled and
awaited, state carried over or reset by :func:`carry_over`, new task started).

The rule, applied the same way at a reload and at a start (against the persisted state):

=============================================  ==============================================
the route's canary, compared with before        what happens
=============================================  ==============================================
identical                                       kept as is (same controller, same task)
other stable or candidate, or newly added       a fresh attempt at step 1 (``start``)
(also after it was removed)
other steps                                     the climb restarts at step 1 of the new list;
                                                rolled back and promoted stay so; paused stays
                                                paused (``reconfigure``)
other settings (guardrails, durations,          state carried over; the next look uses the new
interval, gates, mirror, unit, salt)            settings; a wait for approval ends if its gate
                                                is gone (``reconfigure``)
gone from the config                            ended (``remove``): adding it back later is a
                                                fresh attempt
=============================================  ==============================================

A reload never undoes a rollback: ``restart`` is the explicit way to try again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal, cast

from sidecar.assignment import UnitKey
from sidecar.canary.controller import (
    Action,
    CanaryController,
    CanaryState,
    State,
    evidence_from,
    next_is_gated,
)
from sidecar.config.experiments import CanaryConfig
from sidecar.config.models import RouteConfig
from sidecar.sink import CanaryStateRecord, DuckDBSink

__all__ = ["CanarySupervisor", "Carry", "canary_key", "carry_over"]

log = logging.getLogger(__name__)

#: The persisted state of a canary that the config no longer names.
REMOVED = "removed"

Audit = Callable[[str, str, str | None, str | None, dict[str, Any] | None], None]
Notify = Callable[[dict[str, Any]], object]
Verdict = Literal["keep", "start", "reconfigure"]


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canary_key(config: CanaryConfig) -> str:
    """Identity of a canary's configuration, persisted with its state, in three parts:
    ``PAIR.STEPS.ALL`` (hashes of stable+candidate, of the steps, of every setting), so a
    restart can tell which part of the config changed while the sidecar was stopped."""
    pair = _h(json.dumps([config.stable, config.candidate]))[:8]
    steps = _h(json.dumps(list(config.steps)))[:8]
    return f"{pair}.{steps}.{_h(config.model_dump_json())[:12]}"


def _legacy_key(config: CanaryConfig) -> str:
    """The key files written before the three-part key hold (the whole config's hash)."""
    return _h(config.model_dump_json())[:12]


@dataclass(frozen=True)
class Carry:
    """What :func:`carry_over` decided: the verdict, the state to run with, and why."""

    verdict: Verdict
    state: CanaryState | None  # None: a fresh attempt
    reason: str


def carry_over(
    old_key: str | None, old: CanaryState | None, config: CanaryConfig, now: float
) -> Carry:
    """The module docstring's rule: what becomes of ``old`` (saved under ``old_key``) when
    the route's canary is now ``config``. Pure; ``state`` is None for a fresh attempt."""
    key = canary_key(config)
    if old_key is None or old is None:
        return Carry("start", None, "canary configured")
    if "." not in old_key:  # a file from before the three-part key: only identity is known
        if old_key == _legacy_key(config):
            return Carry("keep", old, "unchanged")
        return Carry("start", None, "canary configuration changed (older recording)")
    pair, steps, _ = old_key.split(".", 2)
    new_pair, new_steps, _ = key.split(".", 2)
    if pair != new_pair:
        return Carry("start", None, "new stable or candidate: a new attempt")
    if old_key == key:
        return Carry("keep", old, "unchanged")
    if steps != new_steps:
        if old.state in ("rolled_back", "promoted"):
            last = len(config.steps) - 1 if old.state == "promoted" else 0
            return Carry("reconfigure", replace(old, step_index=last),
                         f"steps changed; stays {old.state}")
        state: State = "paused" if old.state == "paused" else "running"
        return Carry("reconfigure", CanaryState(state, 0, now, old.last_decision),
                     "steps changed: the climb restarts at step 1")
    if old.state == "awaiting_approval" and not next_is_gated(config, old.step_index):
        return Carry("reconfigure", replace(old, state="running"),
                     "settings changed: the gate it waited at is gone, running again")
    return Carry("reconfigure", old, f"settings changed: state carried over ({old.state})")


class CanarySupervisor:
    """Owns the canary controllers and their evaluation tasks, keyed by route.

    Async context manager; ``aclose`` cancels and awaits every task and is idempotent.
    ``apply`` and manual actions are serialised, so an action never lands on a controller
    that a reload is replacing."""

    def __init__(
        self,
        sink: DuckDBSink,
        *,
        audit: Audit,
        version: Callable[[], str],
        notify: Notify | None = None,
    ) -> None:
        self._sink = sink
        self._audit = audit
        self._version = version
        self._notify = notify
        self._controllers: dict[str, CanaryController] = {}
        self._units: dict[str, Any] = {}  # route -> the route's unit setting it runs with
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: route -> (key, state) last persisted: the rule's "before", also for rows the
        #: sink has not flushed yet. Read from the file at the first apply.
        self._saved: dict[str, tuple[str, CanaryState | None]] | None = None
        self._last_hold: dict[str, tuple[str, ...]] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def controllers(self) -> Mapping[str, CanaryController]:
        """route -> its controller (read-only view; the routing table reads it)."""
        return MappingProxyType(self._controllers)

    def get(self, route: str) -> CanaryController | None:
        return self._controllers.get(route)

    async def __aenter__(self) -> CanarySupervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the one operation -----------------------------------------------------------
    async def apply(self, routes: tuple[RouteConfig, ...] | list[RouteConfig]) -> None:
        """Make the running canaries those of ``routes`` by the module docstring's rule."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("canary supervisor is closed")
            if self._saved is None:
                self._saved = await asyncio.to_thread(self._read_saved)
            wanted = {r.match: r for r in routes if r.canary is not None}
            for match in sorted(set(self._controllers) - set(wanted)):
                await self._remove(match)
            for match in sorted(set(self._saved) - set(wanted)):
                if match not in self._controllers:
                    self._end(match)  # removed while the sidecar was stopped
            for match, route in wanted.items():
                assert route.canary is not None
                current = self._controllers.get(match)
                # The route's unit counts too: a canary without its own ``unit`` uses it.
                if (current is not None and current.config == route.canary
                        and self._units.get(match) == route.unit):
                    continue
                await self._stop_task(match)  # quiescent now: its state is final
                old_key, old_state = self._saved.get(match, (None, None))
                if current is not None:  # a hold updates the decision without persisting
                    old_state = current.state
                carry = carry_over(old_key, old_state, route.canary, time.time())
                controller = self._build(route, carry.state, current)
                self._start(match, route, controller)
                if carry.verdict == "keep":
                    if current is None:
                        log.info("canary %s resumes: %s at step %d", match,
                                 controller.state.state, controller.state.step_index + 1)
                    continue
                self._persist(route.canary, match, old_state, controller.state, "sidecar",
                              carry.verdict, carry.reason)

    async def act(
        self, route: str, action: Action, actor: str, reason: str, *, force: bool = False
    ) -> dict[str, Any]:
        """A manual action on ``route``'s canary; KeyError when it has none, ValueError
        when the action is not allowed now. Returns the status after it."""
        async with self._lock:
            controller = self._controllers.get(route)
            if controller is None:
                raise KeyError(route)
            await controller.act(action, actor, reason, force=force)
            if action == "restart":
                self._last_hold.pop(route, None)
            return controller.status()

    async def aclose(self) -> None:
        """Cancel and await every evaluation task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -------------------------------------------------------------------
    def _read_saved(self) -> dict[str, tuple[str, CanaryState | None]]:
        saved: dict[str, tuple[str, CanaryState | None]] = {}
        for route, (key, state, step, started, last) in self._sink.latest_canary_states().items():
            if state == REMOVED:
                continue
            saved[route] = (key, CanaryState(cast(State, state), int(step), float(started),
                                             json.loads(last) if last else None))
        return saved

    def _build(
        self, route: RouteConfig, state: CanaryState | None, current: CanaryController | None
    ) -> CanaryController:
        assert route.canary is not None
        evaluations = current.evaluations if current is not None and state is not None else 0
        return CanaryController(
            route.match, route.canary, UnitKey.of(route.unit),
            persist=functools.partial(self._persist, route.canary),
            evidence=evidence_from(self._sink.cursor), restored=state,
            on_hold=self._hold, evaluations=evaluations,
        )

    async def _stop_task(self, match: str) -> None:
        task = self._tasks.pop(match, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start(self, match: str, route: RouteConfig, controller: CanaryController) -> None:
        self._controllers[match] = controller
        self._units[match] = route.unit
        task = asyncio.get_running_loop().create_task(controller.run(),
                                                      name=f"canary {match}")
        task.add_done_callback(functools.partial(self._ended, match))
        self._tasks[match] = task

    def _ended(self, match: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("canary %s: evaluation task ended: %r", match, task.exception())

    async def _remove(self, match: str) -> None:
        await self._stop_task(match)
        self._controllers.pop(match, None)
        self._units.pop(match, None)
        self._end(match)

    def _end(self, match: str) -> None:
        assert self._saved is not None
        key, old = self._saved.pop(match, (None, None))
        self._last_hold.pop(match, None)
        if key is None:
            return
        now = time.time()
        self._sink.record_canary_state(CanaryStateRecord(
            now, match, key, REMOVED, old.step_index if old else 0, now, None, self._version()
        ))
        self._audit("sidecar", "canary.remove", match, "canary no longer in the config",
                    {"old": old.to_dict() if old else None})
        log.info("canary %s removed from the config (was %s)", match,
                 old.state if old else "unknown")

    def _persist(
        self, config: CanaryConfig, route: str, old: CanaryState | None, new: CanaryState,
        actor: str, action: str, reason: str,
    ) -> None:
        key = canary_key(config)
        assert self._saved is not None
        self._saved[route] = (key, new)
        now = time.time()
        version = self._version()
        self._sink.record_canary_state(CanaryStateRecord(
            now, route, key, new.state, new.step_index, new.step_started,
            json.dumps(new.last_decision, default=str) if new.last_decision else None,
            version,
        ))
        if self._notify is not None and action in ("rollback", "hold", "gate",
                                                   "force_promote"):
            self._notify({"kind": action, "route": route, "reason": reason, "actor": actor,
                          "candidate": config.candidate, "config_version": version,
                          "ts": now})
        self._audit(actor, f"canary.{action}", route, reason, {
            "old": old.to_dict() if old else None, "new": new.to_dict(),
            "candidate": config.candidate, "stable": config.stable,
        })

    def _hold(self, route: str, evaluation: dict[str, Any]) -> None:
        """A hold is not a state change: only the webhook hears of it, once per reason."""
        reasons = tuple(evaluation.get("reasons", []))
        if self._last_hold.get(route) == reasons:
            return
        self._last_hold[route] = reasons
        if self._notify is not None:
            self._notify({"kind": "hold", "route": route, "reason": "; ".join(reasons),
                          "config_version": self._version(), "ts": time.time()})
