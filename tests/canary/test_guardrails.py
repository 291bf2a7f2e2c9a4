"""The guardrail verdicts on planted evidence, and the sequential test's error level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from analysis.significance import cs_multiplier, mixture_rho2
from sidecar.canary import Evidence, judge
from sidecar.canary.guardrails import _error_rate_bounds
from sidecar.config.experiments import CanaryConfig

CFG = CanaryConfig(
    stable="a", candidate="b", steps=[10, 50, 100], step_min_duration_s=60,
    step_min_requests=200, guardrails={"error_rate_margin": 0.02},
)


def _ev(**kw) -> Evidence:
    base = dict(n_canary=1000, err_canary=5, n_stable=9000, err_stable=45, p99_canary=10.0,
                p99_stable=10.0, lat_n_canary=995, lat_n_stable=8955, pairs=500,
                disagreement=0.01, mean_abs_diff=0.01, units_canary=100, units_stable=900)
    base.update(kw)
    return Evidence(**base)


def test_healthy_step_is_promoted() -> None:
    result = judge(_ev(), CFG, elapsed_s=120, share=10)
    assert result.decision == "promote", result.reasons


def test_failing_candidate_is_rolled_back_with_the_reason() -> None:
    result = judge(_ev(err_canary=200), CFG, elapsed_s=5, share=10)
    assert result.decision == "rollback"
    assert any("error rate" in r for r in result.reasons)


def test_each_guardrail_can_roll_back() -> None:
    assert judge(_ev(p99_canary=40.0), CFG, elapsed_s=120, share=10).decision == "rollback"
    assert judge(_ev(disagreement=0.5), CFG, elapsed_s=120, share=10).decision == "rollback"
    srm = judge(_ev(units_canary=300, units_stable=700), CFG, elapsed_s=120, share=10)
    assert srm.decision == "rollback" and any("SRM" in r for r in srm.reasons)


def test_hold_says_what_is_missing() -> None:
    result = judge(_ev(n_canary=50, err_canary=0), CFG, elapsed_s=10, share=10)
    assert result.decision == "hold"
    text = " ".join(result.reasons)
    assert "duration: 10s of 60s" in text and "requests: 50 of 200" in text


def test_error_bounds_follow_the_published_formula() -> None:
    ev = _ev(n_canary=400, err_canary=12, n_stable=3600, err_stable=72)
    diff, low, high = _error_rate_bounds(ev, 0.05, 400)
    pc, ps = 12.5 / 401, 72.5 / 3601
    se = np.sqrt(pc * (1 - pc) / 400 + ps * (1 - ps) / 3600)
    rho2 = (-2 * np.log(0.05) + np.log(1 - 2 * np.log(0.05))) / 400
    a = 4000 * rho2
    k = np.sqrt(2 * (a + 1) / a * np.log(np.sqrt(a + 1) / 0.05))
    assert diff == 12 / 400 - 72 / 3600
    assert np.isclose(low, diff - k * se, rtol=1e-12) and np.isclose(high, diff + k * se)
    assert np.isclose(k, cs_multiplier(4000, 0.05, mixture_rho2(400, 0.05)))


def test_repeated_looks_keep_the_false_rollback_rate_low() -> None:
    """A/A: equal error rates, a look after every 100 calls; false rollbacks <= alpha."""
    rng = np.random.default_rng(11)
    sims, looks, per_look, share = 1000, 20, 100, 0.2
    n_c = rng.binomial(per_look, share, size=(sims, looks)).cumsum(axis=1)
    n_s = looks * 0 + np.arange(1, looks + 1) * per_look - n_c
    p = 0.05
    e_c = rng.binomial(np.diff(n_c, prepend=0, axis=1), p).cumsum(axis=1)
    e_s = rng.binomial(np.diff(n_s, prepend=0, axis=1), p).cumsum(axis=1)
    rolled = np.zeros(sims, dtype=bool)
    cfg = CanaryConfig(stable="a", candidate="b", steps=[20], step_min_requests=100,
                       guardrails={"error_rate_margin": 0.0})
    for j in range(looks):
        for i in np.flatnonzero(~rolled):
            ev = Evidence(n_canary=int(n_c[i, j]), err_canary=int(e_c[i, j]),
                          n_stable=int(n_s[i, j]), err_stable=int(e_s[i, j]))
            if ev.n_canary >= 10 and judge(ev, cfg, elapsed_s=0, share=20).decision == "rollback":
                rolled[i] = True
    rate = rolled.mean()
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / sims), rate


def test_a_guardrail_look_loads_no_scipy() -> None:
    """The first look runs on the sidecar's event loop: importing scipy there (through
    analysis.significance) held every caller for ~0.5 s; the bounds need numpy only."""
    code = ("import sys; from sidecar.canary import Evidence; "
            "from sidecar.canary.guardrails import _error_rate_bounds; "
            "_error_rate_bounds(Evidence(n_canary=500, err_canary=5, n_stable=500, "
            "err_stable=5), 0.05, 5000.0); print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
