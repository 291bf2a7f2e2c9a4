"""Issue 15.1: the rule that says what a canary's saved state becomes when its config
changes (pure; the reload table in test_reload_sequences.py runs it over a real sidecar)."""

from __future__ import annotations

import hashlib

import pytest

from sidecar.canary import CanaryState, canary_key, carry_over
from sidecar.config.experiments import CanaryConfig


def _cfg(**over: object) -> CanaryConfig:
    data: dict[str, object] = {"stable": "s", "candidate": "c", "steps": [10, 50, 100],
                               "approval_before": [50]}
    data.update(over)
    return CanaryConfig.model_validate(data)


BASE = _cfg()
NOW = 1000.0


def _state(state: str, step: int = 1) -> CanaryState:
    return CanaryState(state, step, 500.0, {"decision": "hold"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old_state", "new", "verdict", "expect"),
    [
        ("running", BASE, "keep", ("running", 1, 500.0)),
        ("running", _cfg(guardrails={"error_rate_margin": 0.1}), "reconfigure",
         ("running", 1, 500.0)),
        ("paused", _cfg(step_min_duration_s=5), "reconfigure", ("paused", 1, 500.0)),
        ("rolled_back", _cfg(guardrails={"error_rate_margin": 0.1}), "reconfigure",
         ("rolled_back", 1, 500.0)),
        ("promoted", _cfg(evaluation_interval_s=1), "reconfigure", ("promoted", 1, 500.0)),
        ("running", _cfg(steps=[5, 50, 100]), "reconfigure", ("running", 0, NOW)),
        ("paused", _cfg(steps=[5, 50, 100]), "reconfigure", ("paused", 0, NOW)),
        ("awaiting_approval", _cfg(steps=[5, 50, 100]), "reconfigure", ("running", 0, NOW)),
        ("rolled_back", _cfg(steps=[5, 50, 100]), "reconfigure", ("rolled_back", 0, 500.0)),
        ("promoted", _cfg(steps=[5, 25, 50, 100]), "reconfigure", ("promoted", 3, 500.0)),
        # Waiting at step 1 for the gate before 50: kept while the gate is, ended without.
        ("awaiting_approval", _cfg(guardrails={"alpha": 0.01}), "reconfigure",
         ("awaiting_approval", 0, 500.0)),
        ("awaiting_approval", _cfg(approval_before=[]), "reconfigure", ("running", 0, 500.0)),
        ("running", _cfg(candidate="c2"), "start", None),
        ("rolled_back", _cfg(stable="s2"), "start", None),
    ],
)
def test_the_rule(old_state: str, new: CanaryConfig, verdict: str, expect: tuple | None) -> None:
    step = 0 if old_state == "awaiting_approval" else 1
    carry = carry_over(canary_key(BASE), _state(old_state, step), new, NOW)
    assert carry.verdict == verdict, carry.reason
    if expect is None:
        assert carry.state is None
    else:
        assert carry.state is not None
        assert (carry.state.state, carry.state.step_index, carry.state.step_started) == expect


def test_nothing_saved_or_an_older_file() -> None:
    assert carry_over(None, None, BASE, NOW).verdict == "start"
    # Files written before the three-part key hold the whole config's hash: identity only.
    legacy = hashlib.sha256(BASE.model_dump_json().encode()).hexdigest()[:12]
    assert carry_over(legacy, _state("promoted"), BASE, NOW).verdict == "keep"
    assert carry_over(legacy, _state("promoted"), _cfg(evaluation_interval_s=3),
                      NOW).verdict == "start"


def test_the_key_names_which_part_changed() -> None:
    pair, steps, every = canary_key(BASE).split(".")
    p2, s2, e2 = canary_key(_cfg(steps=[5, 50, 100])).split(".")
    assert (p2, s2 == steps, e2 == every) == (pair, False, False)
    p3, s3, e3 = canary_key(_cfg(salt="x")).split(".")
    assert (p3, s3, e3 == every) == (pair, steps, False)
