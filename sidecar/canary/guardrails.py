"""Canary guardrails: evidence gathered in SQL from the live recording, judged in numpy.

Each evaluation yields ``promote`` (next step), ``hold`` (not enough evidence yet, saying
what is missing) or ``rollback``, with its reasons. The error-rate check is a sequential
non-inferiority test (an asymptotic confidence sequence), so looking every few seconds
keeps its error level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import duckdb

from sidecar.config.experiments import CanaryConfig
from sidecar.resilience.breaker import CALLER_DEADLINE, CALLER_FAULTS

__all__ = ["Evaluation", "Evidence", "gather_evidence", "judge"]

Verdict = Literal["promote", "hold", "rollback"]

MIN_PAIRS = 50
MIN_SRM_UNITS = 100


@dataclass(frozen=True)
class Evidence:
    """What the recording says about the current step (since it started)."""

    n_canary: int = 0
    err_canary: int = 0
    n_stable: int = 0
    err_stable: int = 0
    p99_canary: float | None = None
    p99_stable: float | None = None
    lat_n_canary: int = 0
    lat_n_stable: int = 0
    pairs: int = 0
    disagreement: float | None = None
    mean_abs_diff: float | None = None
    units_canary: int = 0
    units_stable: int = 0


@dataclass(frozen=True)
class Evaluation:
    """One guardrail evaluation: the verdict, its reasons and the figures behind them."""

    decision: Verdict
    reasons: tuple[str, ...]
    evidence: Evidence
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "evidence": asdict(self.evidence),
            "figures": self.figures,
        }


#: The breaker's rule for call outcomes: answers of the caller's making (its input, its
#: own short deadline) are no verdict on either side, so a caller cannot force a rollback.
_BACKENDS_DOING = (
    f"status NOT IN ({', '.join(repr(c) for c in sorted(CALLER_FAULTS))}) AND NOT "
    f"(status = 'DEADLINE_EXCEEDED' AND error IS NOT DISTINCT FROM {CALLER_DEADLINE!r})"
)

_SQL = f"""
WITH served AS (
    SELECT 'canary' AS role, status, latency_ms FROM calls
    WHERE route = $route AND served AND ts >= $since AND role = 'canary'
      AND {_BACKENDS_DOING}
    UNION ALL
    SELECT 'stable' AS role, status, latency_ms FROM calls
    WHERE route = $route AND served AND ts >= $stable_since AND backend = $stable
      AND role IN ('stable', 'primary') AND {_BACKENDS_DOING}
),
pairs AS (
    SELECT (s.label IS DISTINCT FROM c.label) AS differs, abs(c.score - s.score) AS d
    FROM calls s JOIN calls c USING (request_id)
    WHERE s.route = $route AND s.role = 'stable' AND s.served AND s.status = 'OK'
      AND c.role = 'shadow' AND c.backend = $candidate AND c.status = 'OK'
      AND s.ts >= $stable_since
),
units AS (
    SELECT variant, count(DISTINCT unit_id) AS n FROM requests
    WHERE route = $route AND experiment = 'canary' AND ts >= $since GROUP BY variant
)
SELECT
    (SELECT count(*) FROM served WHERE role = 'canary'),
    (SELECT count(*) FROM served WHERE role = 'canary' AND status <> 'OK'),
    (SELECT count(*) FROM served WHERE role = 'stable'),
    (SELECT count(*) FROM served WHERE role = 'stable' AND status <> 'OK'),
    (SELECT quantile_cont(latency_ms, 0.99) FROM served WHERE role = 'canary' AND status = 'OK'),
    (SELECT quantile_cont(latency_ms, 0.99) FROM served WHERE role = 'stable' AND status = 'OK'),
    (SELECT count(*) FROM served WHERE role = 'canary' AND status = 'OK'),
    (SELECT count(*) FROM served WHERE role = 'stable' AND status = 'OK'),
    (SELECT count(*) FROM pairs),
    (SELECT avg(differs::INTEGER) FROM pairs),
    (SELECT avg(d) FROM pairs),
    coalesce((SELECT n FROM units WHERE variant = 'canary'), 0),
    coalesce((SELECT n FROM units WHERE variant = 'stable'), 0)
"""


def gather_evidence(
    con: duckdb.DuckDBPyConnection,
    route: str,
    candidate: str,
    stable: str,
    since_epoch: float,
    stable_since_epoch: float,
) -> Evidence:
    """Reduce the step's rows to the figures the guardrails need (one SQL round trip).

    The candidate is judged on the step's calls. The stable side is the same window while
    it still serves units; at a 100% step it is the stable's recorded history on the route
    (its baseline), since it serves nobody then."""
    row = con.execute(
        _SQL,
        {"route": route, "candidate": candidate, "stable": stable,
         "since": _ts(since_epoch), "stable_since": _ts(stable_since_epoch)},
    ).fetchall()[0]
    return Evidence(*row)


def _ts(epoch: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _error_rate_bounds(ev: Evidence, alpha: float, n_opt: float) -> tuple[float, float, float]:
    """Estimate and confidence-sequence bounds of (candidate - stable) error rate."""
    # Imported here: statistics load only in a sidecar that runs a canary; the confidence
    # sequence alone (numpy), not analysis.significance, whose scipy import takes ~0.5 s.
    from analysis.confidence_sequence import cs_multiplier, mixture_rho2

    nc, ns = ev.n_canary, ev.n_stable
    # Shrunk rates keep the variance positive when no error was seen yet.
    pc = (ev.err_canary + 0.5) / (nc + 1)
    ps = (ev.err_stable + 0.5) / (ns + 1)
    diff = ev.err_canary / nc - ev.err_stable / ns
    se = math.sqrt(pc * (1 - pc) / nc + ps * (1 - ps) / ns)
    k = float(cs_multiplier(nc + ns, alpha, mixture_rho2(n_opt, alpha)))
    return diff, diff - k * se, diff + k * se


def judge(
    ev: Evidence, config: CanaryConfig, *, elapsed_s: float, share: float
) -> Evaluation:
    """The verdict for one step from its evidence (pure; unit-tested on planted figures)."""
    g = config.guardrails
    bad: list[str] = []
    missing: list[str] = []
    figures: dict[str, Any] = {}
    if ev.n_canary >= 10 and ev.n_stable >= 10:
        diff, low, high = _error_rate_bounds(ev, g.alpha, max(2.0 * config.step_min_requests, 20))
        figures["error_rate_diff"] = diff
        figures["error_rate_diff_cs"] = [low, high]
        if low > g.error_rate_margin:
            bad.append(
                f"error rate: candidate exceeds stable by {diff:.2%} (sequential bound "
                f"{low:.2%} > margin {g.error_rate_margin:.2%})"
            )
        elif high >= g.error_rate_margin:
            missing.append(
                f"error rate: upper bound {high:.2%} not yet below margin "
                f"{g.error_rate_margin:.2%}"
            )
    else:
        missing.append(f"error rate: {ev.n_canary} canary / {ev.n_stable} stable calls")
    if min(ev.lat_n_canary, ev.lat_n_stable) >= g.min_latency_samples and ev.p99_stable:
        ratio = (ev.p99_canary or 0.0) / ev.p99_stable
        figures["latency_p99_ratio"] = ratio
        if ratio > g.max_latency_p99_ratio:
            bad.append(f"latency: p99 ratio {ratio:.2f} > {g.max_latency_p99_ratio:.2f}")
    else:
        missing.append("latency: too few successful calls for a p99")
    if ev.pairs >= MIN_PAIRS:
        figures["disagreement"] = ev.disagreement
        figures["mean_abs_diff"] = ev.mean_abs_diff
        if (g.max_disagreement is not None and ev.disagreement is not None
                and ev.disagreement > g.max_disagreement):
            bad.append(f"divergence: {ev.disagreement:.1%} of pairs disagree "
                       f"> {g.max_disagreement:.1%}")
        if (g.max_mean_abs_diff is not None and ev.mean_abs_diff is not None
                and ev.mean_abs_diff > g.max_mean_abs_diff):
            bad.append(f"divergence: mean |diff| {ev.mean_abs_diff:.4f} > {g.max_mean_abs_diff}")
    elif config.mirror_stable and (g.max_disagreement is not None
                                   or g.max_mean_abs_diff is not None):
        missing.append(f"divergence: {ev.pairs} mirrored pairs (need {MIN_PAIRS})")
    units = ev.units_canary + ev.units_stable
    if units >= MIN_SRM_UNITS and 0 < share < 100:
        from scipy import stats

        expected = [units * share / 100, units * (1 - share / 100)]
        p = float(stats.chisquare([ev.units_canary, ev.units_stable], expected).pvalue)
        figures["srm_p_value"] = p
        if p < g.srm_p_value:
            bad.append(f"SRM: canary units {ev.units_canary}/{units} vs {share:g}% (p={p:.2g})")
    if elapsed_s < config.step_min_duration_s:
        missing.append(f"duration: {elapsed_s:.0f}s of {config.step_min_duration_s:.0f}s")
    if ev.n_canary < config.step_min_requests:
        missing.append(f"requests: {ev.n_canary} of {config.step_min_requests}")
    if bad:
        return Evaluation("rollback", tuple(bad), ev, figures)
    if missing:
        return Evaluation("hold", tuple(missing), ev, figures)
    return Evaluation("promote", ("every guardrail passed",), ev, figures)
