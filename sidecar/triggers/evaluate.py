"""Evaluating retraining triggers over recorded data with the analysis package.

Each trigger becomes a :class:`TriggerResult` with the evidence that decided it; a trigger that
cannot be evaluated (no data, no provenance) does not fire and says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import duckdb

from sidecar.triggers.config import (
    AgeTrigger,
    DivergenceTrigger,
    DriftTrigger,
    QualityTrigger,
    TriggerConfig,
    TriggerKind,
)

__all__ = ["TriggerResult", "check_lines", "evaluate_triggers"]


@dataclass(frozen=True)
class TriggerResult:
    """The verdict of one trigger at one moment."""

    name: str
    kind: TriggerKind
    fired: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def as_event(self) -> dict[str, Any]:
        """The webhook event (``kind: trigger``) announcing this result."""
        return {"kind": "trigger", "name": self.name, "trigger_kind": self.kind,
                "fired": self.fired, "evidence": _plain(self.evidence), "message": self.message}


def check_lines(events: Sequence[dict[str, Any]]) -> list[str]:
    """``sidecar check``'s output from :meth:`TriggerResult.as_event` values: one line per
    trigger, then a summary that says what the exit code will say."""
    lines = [f"{'FIRED' if e['fired'] else 'quiet':<6} {e['name']:<24} "
             f"{e['trigger_kind']:<11} {e['message']}" for e in events]
    fired = sum(1 for e in events if e["fired"])
    if not events:
        lines.append("no triggers evaluated")
    elif fired:
        lines.append(f"{fired} of {len(events)} triggers fired (exit 1)")
    else:
        lines.append(f"none of {len(events)} triggers fired")
    return lines


def _plain(value: Any) -> Any:
    from analysis.report.json import jsonable

    return jsonable(value)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def evaluate_triggers(
    con: duckdb.DuckDBPyConnection,
    triggers: Sequence[TriggerConfig],
    config_json: str | dict[str, Any] | None,
    now: datetime,
) -> list[TriggerResult]:
    """Evaluate ``triggers`` on the recorded tables of ``con`` as of ``now``.

    ``config_json`` is the serving config (canonical JSON or its dict) whose
    ``backends[].provenance`` age triggers read; None reads the latest row of ``configs``.
    Windows end at ``now`` (naive UTC, like recorded timestamps).
    """
    now = _naive_utc(now)
    config = _config(con, config_json) if any(
        isinstance(t, AgeTrigger) for t in triggers) else {}
    results: list[TriggerResult] = []
    for trigger in triggers:
        if isinstance(trigger, AgeTrigger):
            results.append(_age(trigger, config, now))
        elif isinstance(trigger, DriftTrigger):
            results.append(_drift(con, trigger, now))
        elif isinstance(trigger, QualityTrigger):
            results.append(_quality(con, trigger, now))
        else:
            results.append(_divergence(con, trigger, now))
    return results


def _config(con: duckdb.DuckDBPyConnection, given: str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(given, dict):
        return given
    if given is None:
        try:
            rows = con.execute("SELECT config_json FROM configs ORDER BY ts DESC LIMIT 1"
                               ).fetchall()
        except duckdb.Error:
            return {}
        if not rows:
            return {}
        given = str(rows[0][0])
    try:
        parsed = json.loads(given)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _trained_at(provenance: Any) -> date | None:
    if not isinstance(provenance, dict):
        return None
    raw = provenance.get("trained_at") or provenance.get("created_at")
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).date()
    except ValueError:
        return None


def _age(trigger: AgeTrigger, config: dict[str, Any], now: datetime) -> TriggerResult:
    backends = [b for b in config.get("backends") or []
                if isinstance(b, dict) and b.get("name") == trigger.backend]
    if not backends:
        return TriggerResult(trigger.name, "age", False, {"backend": trigger.backend},
                             f"backend {trigger.backend!r} is not in the config")
    backend = backends[0]
    trained = _trained_at(backend.get("provenance"))
    evidence: dict[str, Any] = {"backend": trigger.backend, "version": backend.get("version"),
                                "max_age_days": trigger.max_age_days}
    if trained is None:
        return TriggerResult(trigger.name, "age", False, evidence,
                             f"backend {trigger.backend!r} has no provenance.trained_at")
    age = (now.date() - trained).days
    evidence |= {"trained_at": trained.isoformat(), "age_days": age}
    fired = age > trigger.max_age_days
    verdict = "older than" if fired else "within"
    return TriggerResult(trigger.name, "age", fired, evidence,
                         f"{trigger.backend} was trained {age} days ago, {verdict} "
                         f"{trigger.max_age_days:g} days")


def _drift(con: duckdb.DuckDBPyConnection, trigger: DriftTrigger, now: datetime) -> TriggerResult:
    from analysis.drift import analyze_drift

    split = now - timedelta(hours=trigger.window_h)
    start = split - timedelta(hours=trigger.reference_h or trigger.window_h)
    report = analyze_drift(con, reference=(start, split), current=(split, now),
                           route=trigger.route)
    wanted = set(trigger.features)
    features = [f for f in report.features
                if f.route == trigger.route and (not wanted or f.feature in wanted)]
    evidence: dict[str, Any] = {
        "route": trigger.route, "reference": [start, split], "current": [split, now],
        "psi_max": trigger.psi_max, "ks_p_min": trigger.ks_p_min, "features": {},
    }
    breaches: list[str] = []
    for f in features:
        evidence["features"][f.feature] = {"psi": f.psi, "ks_p": f.ks_p,
                                           "n_reference": f.n_reference, "n_current": f.n_current}
        if trigger.psi_max is not None and f.psi is not None and f.psi > trigger.psi_max:
            breaches.append(f"{f.feature} PSI {f.psi:.3g} > {trigger.psi_max:g}")
        if trigger.ks_p_min is not None and f.ks_p is not None and f.ks_p < trigger.ks_p_min:
            breaches.append(f"{f.feature} KS p {f.ks_p:.3g} < {trigger.ks_p_min:g}")
    missing = sorted(wanted - {f.feature for f in features})
    if missing:
        evidence["missing_features"] = missing
    if breaches:
        return TriggerResult(trigger.name, "drift", True, evidence, "; ".join(breaches))
    if not features:
        why = report.message or "no selected feature has values in both windows"
        return TriggerResult(trigger.name, "drift", False, evidence, why)
    return TriggerResult(trigger.name, "drift", False, evidence,
                         f"{len(features)} feature(s) within bounds")


def _quality(con: duckdb.DuckDBPyConnection, trigger: QualityTrigger,
             now: datetime) -> TriggerResult:
    from analysis.quality import analyze_quality

    figure = trigger.bound.figure
    kind: Literal["binary", "regression"] = "regression" if figure == "mae" else "binary"
    report = analyze_quality(con, metric=trigger.metric, kind=kind, route=trigger.route,
                             since=now - timedelta(hours=trigger.window_h), until=now)
    rows = [m for m in report.models if m.backend == trigger.model]
    bound = trigger.bound.auc_min if figure == "auc" else (
        trigger.bound.brier_max if figure == "brier" else trigger.bound.mae_max)
    evidence: dict[str, Any] = {"model": trigger.model, "metric": trigger.metric,
                                "figure": figure, "bound": bound, "window_h": trigger.window_h,
                                "models": []}
    breaches: list[str] = []
    for m in rows:
        value = getattr(m, figure)
        evidence["models"].append({"route": m.route, "version": m.version, "n": m.n,
                                   figure: value, f"{figure}_ci": getattr(m, f"{figure}_ci")})
        if value is None or m.n < trigger.min_n or bound is None:
            continue
        low = figure == "auc"
        if (value < bound) if low else (value > bound):
            sign = "<" if low else ">"
            breaches.append(f"{m.backend}@{m.version} on {m.route}: {figure} {value:.4g} "
                            f"{sign} {bound:g} (n={m.n})")
    if breaches:
        return TriggerResult(trigger.name, "quality", True, evidence, "; ".join(breaches))
    if not rows:
        return TriggerResult(trigger.name, "quality", False, evidence,
                             f"no labelled requests answered by {trigger.model!r} "
                             f"in the last {trigger.window_h:g} h")
    counted = sum(m.n for m in rows if m.n >= trigger.min_n)
    note = "within bound" if counted else f"fewer than {trigger.min_n} labelled requests"
    return TriggerResult(trigger.name, "quality", False, evidence, note)


def _divergence(con: duckdb.DuckDBPyConnection, trigger: DivergenceTrigger,
                now: datetime) -> TriggerResult:
    from analysis.divergence import analyze_divergence

    report = analyze_divergence(con, since=now - timedelta(hours=trigger.window_h), until=now,
                                route=trigger.route)
    pairs = [p for p in report.pairs if p.shadow == trigger.shadow and p.segment is None]
    evidence: dict[str, Any] = {"route": trigger.route, "shadow": trigger.shadow,
                                "max_disagreement": trigger.max_disagreement,
                                "max_mean_abs_diff": trigger.max_mean_abs_diff, "pairs": []}
    breaches: list[str] = []
    for p in pairs:
        agreement = p.classes.agreement if p.classes is not None else None
        disagreement = None if agreement is None else 1.0 - agreement
        mad = p.numeric.mae if p.numeric is not None else None
        evidence["pairs"].append({"primary": p.primary, "n": p.n,
                                  "disagreement": disagreement, "mean_abs_diff": mad})
        if p.n < trigger.min_n:
            continue
        if (trigger.max_disagreement is not None and disagreement is not None
                and disagreement > trigger.max_disagreement):
            breaches.append(f"{p.primary} → {p.shadow}: disagreement {disagreement:.3g} > "
                            f"{trigger.max_disagreement:g} (n={p.n})")
        if (trigger.max_mean_abs_diff is not None and mad is not None
                and mad > trigger.max_mean_abs_diff):
            breaches.append(f"{p.primary} → {p.shadow}: mean |diff| {mad:.3g} > "
                            f"{trigger.max_mean_abs_diff:g} (n={p.n})")
    if breaches:
        return TriggerResult(trigger.name, "divergence", True, evidence, "; ".join(breaches))
    if not pairs:
        return TriggerResult(trigger.name, "divergence", False, evidence,
                             report.message or f"no pairs with shadow {trigger.shadow!r}")
    return TriggerResult(trigger.name, "divergence", False, evidence, "within bounds")
