"""A/B experiment analysis: DuckDB reduces units to per-variant sufficient statistics
(:mod:`analysis.exposure`), :mod:`analysis.significance` turns them into one report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import duckdb

from analysis.engine import Engine
from analysis.experiment_engine import (
    exposed_condition,
    gather_engine,
    newest_config_json,
    scope_engine,
    table_columns,
)
from analysis.exposure import INPUT_TABLE, Gathered, MetricSums, RatioSums, gather
from analysis.load import VersionScope, time_filter, version_scope
from analysis.significance import (
    DEFAULT_ALPHA,
    P_FLOOR,
    Comparison,
    Inference,
    SrmResult,
    benjamini_hochberg,
    cuped_test,
    holm,
    horizon_alpha,
    proportions_test,
    ratio_test,
    srm_test,
    welch_test,
)
from analysis.stats import PairStats, SampleStats

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

    from analysis.canary_readout import CanaryReport

__all__ = [
    "DEFAULT_CUPED_LOOKBACK",
    "REPORT_SCHEMA",
    "ExperimentReport",
    "ExperimentResult",
    "ResultRow",
    "Source",
    "analyze_experiments",
]

#: /2: outcomes count from first exposure, non-finite rows no longer count as 0, one config
#: version per route by default, notes/rel_effect_of/p_value_is_bound, canaries apart.
REPORT_SCHEMA = "shadowcar.report.experiment/2"
#: Name given to the single experiment of an analyst table when none is passed.
DEFAULT_TABLE_EXPERIMENT = "experiment"
#: How far before a unit's first exposure its outcomes feed the CUPED covariate.
DEFAULT_CUPED_LOOKBACK = timedelta(days=14)
#: The requests that expose a unit to an experiment (the version scope looks at these).
_EXPOSED = "exposed AND experiment IS NOT NULL AND unit_id IS NOT NULL AND variant IS NOT NULL"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Source = Literal["recorded", "table"]
RowKind = Literal["mean", "ratio"]
_ROW_KEYS = (
    "metric", "variant", "control", "n_control", "n_variant", "mean_control", "mean_variant",
    "abs_effect", "abs_ci", "rel_effect", "rel_ci", "p_value", "p_value_holm", "p_value_bh",
    "method", "message",
)


@dataclass(frozen=True)
class ResultRow:
    """One metric, one non-control variant against the control."""

    metric: str
    variant: str
    control: str
    kind: RowKind
    comparison: Comparison
    p_value_holm: float | None = None
    p_value_bh: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body = self.comparison.to_dict()
        out: dict[str, Any] = {
            "metric": self.metric,
            "variant": self.variant,
            "control": self.control,
            **body,
            "p_value_holm": self.p_value_holm,
            "p_value_bh": self.p_value_bh,
            "kind": self.kind,
            **self.extra,
        }
        for key in ("p_value_holm", "p_value_bh", "p_value_ztest"):
            if out.get(key) == 0.0:  # underflow: the bound, flagged like p_value
                out[key] = P_FLOOR
                out["p_value_is_bound"] = True
        ordered = {k: out[k] for k in _ROW_KEYS}
        ordered.update((k, v) for k, v in out.items() if k not in ordered)
        return ordered


@dataclass(frozen=True)
class ExperimentResult:
    """SRM check and all result rows of one experiment (the Holm/BH family)."""

    name: str
    control: str | None
    variants: tuple[str, ...]
    srm: SrmResult
    results: tuple[ResultRow, ...]
    message: str | None = None
    excluded_units: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "control": self.control,
            "variants": list(self.variants),
            "srm": self.srm.to_dict(),
            "results": [r.to_dict() for r in self.results],
            "message": self.message,
            "excluded_units": self.excluded_units,
        }


@dataclass(frozen=True)
class ExperimentReport:
    """Everything :func:`analyze_experiments` found; ``to_dict`` is the stable JSON form."""

    experiments: tuple[ExperimentResult, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    #: the rules every row follows (signs, exposure, CUPED, sequential tuning, versions)
    notes: tuple[str, ...] = ()
    #: the canary readout of the same source (recorded data), or None
    canaries: CanaryReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "notes": list(self.notes),
            "experiments": [e.to_dict() for e in self.experiments],
            "canaries": None if self.canaries is None else self.canaries.to_dict(),
            "settings": dict(self.settings),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per result row, with the experiment name and SRM verdict beside it."""
        import pandas as pd

        records = []
        for exp in self.experiments:
            for row in exp.results:
                d = row.to_dict()
                for key in ("abs_ci", "rel_ci"):
                    ci = d.pop(key)
                    d[f"{key}_low"], d[f"{key}_high"] = ci if ci is not None else (None, None)
                records.append({"experiment": exp.name, **d,
                                "srm_p_value": exp.srm.p_value, "srm_flag": exp.srm.flag})
        return pd.DataFrame.from_records(records)


@dataclass(frozen=True)
class _Config:
    """What the newest recorded configuration says about one experiment."""

    order: tuple[str, ...]
    weights: dict[str, float] | None


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> set[str]:
    cur = con.execute(f"SELECT * FROM {relation} LIMIT 0")
    return {d[0].lower() for d in cur.description or []}


def _newest_config(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, _Config], str | None]:
    try:
        row = con.execute(
            "SELECT config_json FROM configs ORDER BY ts DESC NULLS LAST LIMIT 1"
        ).fetchone()
    except duckdb.CatalogException:
        return {}, None
    return _read_config(None if row is None else row[0])


def _need(con: duckdb.DuckDBPyConnection | None) -> duckdb.DuckDBPyConnection:
    if con is None:
        raise ValueError("analyze_experiments needs a DuckDB connection or an engine")
    return con


def _read_config(text: str | None) -> tuple[dict[str, _Config], str | None]:
    if text is None:
        return {}, None
    try:
        cfg = json.loads(text)
        out: dict[str, _Config] = {}
        for route in cfg.get("routes") or []:
            exps = [(route or {}).get("experiment"), *((route or {}).get("experiments") or [])]
            for exp in exps:
                if not exp or not exp.get("name"):
                    continue
                variants = exp.get("variants") or []
                order = tuple(str(v["name"]) for v in variants)
                weighted = {str(v["name"]): float(v["weight"])
                            for v in variants if v.get("weight") is not None}
                out[str(exp["name"])] = _Config(order, weighted or None)
        return out, None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return {}, f"newest configs row is unreadable ({exc}); weights and order unknown"


# --------------------------------------------------------------- numpy layer


def _variant_order(data_variants: Sequence[str], cfg: _Config | None,
                   weights: Mapping[str, float] | None) -> tuple[str, ...]:
    order = list(cfg.order) if cfg else []
    if weights:
        order += [v for v in weights if v not in order]
    order += sorted(v for v in data_variants if v not in order)
    return tuple(order)


def _choose_control(variants: Sequence[str], control: str | None) -> tuple[str | None, str | None]:
    if control is not None:
        if control in variants:
            return control, None
        return None, (f"control {control!r} is not a variant of this experiment "
                      f"(variants: {', '.join(variants) or 'none'})")
    if not variants:
        return None, "no variants"
    return ("control" if "control" in variants else variants[0]), None


def _row_notes(a: MetricSums, b: MetricSums, srm: SrmResult) -> list[str]:
    notes = []
    if a.bad or b.bad:
        notes.append(f"non-finite values (NaN/inf/NULL) left out of their units' values: "
                     f"control {a.bad} row(s), variant {b.bad} row(s)")
    if a.dropped or b.dropped:
        notes.append(f"units whose every value was non-finite left out of this metric: "
                     f"control {a.dropped}, variant {b.dropped}")
    if srm.flag:
        notes.append("sample ratio mismatch flagged: interpret with care")
    return notes


def _with_notes(c: Comparison, notes: Sequence[str]) -> Comparison:
    if not notes:
        return c
    return replace(c, message="; ".join([*([c.message] if c.message else []), *notes]))


@dataclass(frozen=True)
class _Plan:
    """How every comparison of one report is made."""

    cuped: bool
    recorded: bool
    inference: Inference
    alpha: float
    n_opt: float | None
    level: float | None
    lookback: timedelta | None


def _compare_metric(plan: _Plan, a: MetricSums, b: MetricSums) -> Comparison:
    ya = SampleStats(a.n, a.sum, a.sum_sq, a.shift)
    yb = SampleStats(b.n, b.sum, b.sum_sq, b.shift)
    seq = {"inference": plan.inference, "n_opt": plan.n_opt, "level": plan.level,
           "alpha": plan.alpha}
    if plan.cuped and plan.recorded and a.pre_rows + b.pre_rows == 0:
        days = plan.lookback.total_seconds() / 86400 if plan.lookback else 0
        return _with_notes(welch_test(ya, yb, **seq),  # type: ignore[arg-type]
                           [f"no pre-exposure data for this metric in the {days:g}-day "
                            "lookback: CUPED not applied, Welch reported"])
    if plan.cuped:
        pair_a = PairStats(a.n, a.sum, a.sum_sq, a.sum_pre, a.sum_pre_sq, a.sum_cross,
                           a.shift, a.shift_pre)
        pair_b = PairStats(b.n, b.sum, b.sum_sq, b.sum_pre, b.sum_pre_sq, b.sum_cross,
                           b.shift, b.shift_pre)
        return cuped_test(pair_a, pair_b, **seq)  # type: ignore[arg-type]
    return welch_test(ya, yb, **seq)  # type: ignore[arg-type]


def _analyze_one(
    name: str,
    g: Gathered,
    cfg: _Config | None,
    weights: Mapping[str, float] | None,
    control: str | None,
    ratios: Mapping[str, tuple[str, str]],
    plan: _Plan,
    notes: Sequence[str],
) -> ExperimentResult:
    units = g.units.get(name, {})
    w = dict(weights) if weights is not None else (cfg.weights if cfg else None)
    variants = _variant_order(list(units), cfg, w)
    srm = srm_test({v: units.get(v, 0) for v in variants}, w)
    chosen, problem = _choose_control(variants, control)
    messages = list(notes)
    excluded = g.excluded.get(name, 0)
    if excluded:
        messages.append(f"{excluded} unit(s) seen in several variants were excluded")
    timing = g.timing.get(name, {})
    if timing.get("early"):
        messages.append(f"{timing['early']} outcome row(s) from before their unit's first "
                        "exposure left out")
    if timing.get("late"):
        messages.append(f"{timing['late']} outcome row(s) after their unit's metric window "
                        "left out")
    if timing.get("untimed"):
        messages.append(f"{timing['untimed']} outcome row(s) without a timestamp counted "
                        "as after exposure")
    if chosen is None:
        return ExperimentResult(name, None, variants, srm, (),
                                "; ".join([*messages, problem or "no control"]), excluded)
    others = [v for v in variants if v != chosen]
    metrics = g.present(name)
    if not metrics:
        messages.append("no outcomes for the exposed units")

    def sums(variant: str, metric: str) -> MetricSums:
        return g.metrics.get((name, variant, metric)) or MetricSums.zero()

    seq = {"inference": plan.inference, "n_opt": plan.n_opt, "level": plan.level,
           "alpha": plan.alpha}
    rows: list[ResultRow] = []
    for metric in metrics:
        for variant in others:
            sa, sb = sums(chosen, metric), sums(variant, metric)
            extra: dict[str, Any] = {}
            comp = _compare_metric(plan, sa, sb)
            if sa.binary and sb.binary and sa.n > 0 and sb.n > 0:
                extra["p_value_ztest"] = proportions_test(
                    SampleStats(sa.n, sa.sum, sa.sum_sq, sa.shift),
                    SampleStats(sb.n, sb.sum, sb.sum_sq, sb.shift),
                    alpha=plan.alpha).p_value
            comp = _with_notes(comp, _row_notes(sa, sb, srm))
            rows.append(ResultRow(metric, variant, chosen, "mean", comp, extra=extra))
    for ratio, (num, den) in ratios.items():
        missing = [m for m in (num, den) if m not in metrics]
        for variant in others:
            arms = []
            for v in (chosen, variant):
                r = g.ratios.get((name, v, ratio)) or RatioSums(0, 0.0, 0.0, 0.0, 0.0, 0.0)
                arms.append(PairStats(r.n, r.sum_y, r.sum_y2, r.sum_x, r.sum_x2, r.sum_xy,
                                      r.shift_y, r.shift_x))
            # Non-finite rows of either metric, and units left out of either, count here.
            joint = [replace(MetricSums.zero(), bad=sums(v, num).bad + sums(v, den).bad,
                             dropped=units.get(v, 0) - arm.n if arm.n else 0)
                     for v, arm in ((chosen, arms[0]), (variant, arms[1]))]
            notes_r = _row_notes(joint[0], joint[1], srm)
            if missing:
                notes_r.insert(0, f"metric(s) {', '.join(map(repr, missing))} have no outcomes")
            comp = ratio_test(arms[0], arms[1], **seq)  # type: ignore[arg-type]
            rows.append(ResultRow(ratio, variant, chosen, "ratio", _with_notes(comp, notes_r),
                                  extra={"numerator": num, "denominator": den}))
    pvals = [r.comparison.p_value for r in rows]
    rows = [replace(r, p_value_holm=h, p_value_bh=b)
            for r, h, b in zip(rows, holm(pvals), benjamini_hochberg(pvals), strict=True)]
    return ExperimentResult(name, chosen, variants, srm, tuple(rows),
                            "; ".join(messages) or None, excluded)


def _span(value: timedelta | str | None, flag: str) -> timedelta | None:
    """A duration from a timedelta or text such as ``7d``, ``36h``, ``90m``."""
    if value is None or isinstance(value, timedelta):
        if isinstance(value, timedelta) and value <= timedelta(0):
            raise ValueError(f"{flag} must be a positive duration")
        return value
    found = _DURATION.match(value.strip())
    if not found:
        raise ValueError(f"{flag}: cannot read {value!r}; use a duration such as 7d, 36h, 90m")
    try:
        span = timedelta(seconds=float(found.group(1)) * _UNIT_SECONDS[found.group(2)])
    except OverflowError:  # 99999999999999d: past what a timedelta holds
        raise ValueError(f"{flag}: {value!r} is too long a duration") from None
    if span <= timedelta(0):
        raise ValueError(f"{flag} must be a positive duration")
    return span


def _method_notes(plan: _Plan, window: timedelta | None, source: Source,
                  expected_n: float | None) -> list[str]:
    """The rules every result row of the report follows, said once."""
    notes = ["abs_effect = variant - control; rel_effect = abs_effect / |control figure| "
             "(rows name the figure in rel_effect_of); intervals are "
             f"{100 * (1 - plan.alpha):g}% two-sided"]
    if source == "recorded":
        rule = ("a unit counts from its first exposure: its outcomes from that moment on"
                + (f", within {_fmt_span(window)} of it," if window else "")
                + " are its value (0 without any); earlier outcomes are left out")
        notes.append(rule)
    notes.append("a unit's value is the sum of its finite outcome rows; non-finite rows are "
                 "left out, and a unit whose every row is non-finite is left out of the metric")
    if plan.cuped:
        cov = (f"the same metric's outcomes in the {_fmt_span(plan.lookback)} before the unit's "
               "first exposure" if plan.recorded else "the table's pre_value column")
        notes.append(f"CUPED: covariate = {cov}; mean_control/mean_variant are raw means, "
                     "mean_*_adjusted the CUPED-adjusted ones; abs_effect and rel_effect are "
                     "adjusted (rel_effect over the adjusted control mean)")
    if plan.inference == "sequential":
        if expected_n is not None:
            tuning = (f"tuned to the planned {expected_n:g} units, boundary level "
                      f"{plan.level:.4g} so that continuous monitoring up to that size spends "
                      f"alpha {plan.alpha:g} (the guarantee ends there)")
        elif plan.n_opt is not None:
            tuning = f"tightest at n_opt = {plan.n_opt:g} units"
        else:
            tuning = ("tuned to each comparison's own units (the experiment's traffic); the "
                      "tuning moves with n, so the peeking guarantee is approximate (simulated "
                      "A/A: 1.3% rejected at 10 looks, 3.4% at 100, 5.5% at 1000); --expected-n "
                      "fixes it in advance")
        notes.append("sequential: asymptotic confidence sequences (Waudby-Smith et al. 2023), "
                     f"valid under peeking, {tuning}; p_value < alpha exactly when the interval "
                     "excludes 0")
    return notes


def _fmt_span(span: timedelta | None) -> str:
    if span is None:
        return "-"
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def analyze_experiments(
    con: duckdb.DuckDBPyConnection | None,
    *,
    source: Source = "recorded",
    name: str = DEFAULT_TABLE_EXPERIMENT,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    sequential: bool = False,
    sequential_n_opt: float | None = None,
    expected_n: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    cuped: bool | None = None,
    cuped_lookback: timedelta | str = DEFAULT_CUPED_LOOKBACK,
    window: timedelta | str | None = None,
    winsorize: float | None = None,
    ratios: Mapping[str, tuple[str, str]] | None = None,
    version: str | None = None,
    all_versions: bool = False,
    canaries: bool = True,
    engine: Engine | None = None,
    passes: int | None = None,
) -> ExperimentReport:
    """Analyse every experiment in ``con``.

    ``source="recorded"``: tables/views ``requests``, ``outcomes``, ``configs`` in the
    recorded schema; exposure is an exposed request of an experiment, and weights and
    variant order come from the newest ``configs`` row unless ``weights`` is given. A unit
    counts from its first exposure: its outcomes from then on (within ``window`` of it, e.g.
    ``"7d"``) are its value; earlier ones are left out. Outcomes join by unit_id, or by
    request_id to that request's unit; ``since``/``until`` bound the exposures (half-open),
    ``until`` the outcomes too. Each route's newest config version is analysed unless
    ``version`` names one or ``all_versions``. Canaries get their own readout
    (:mod:`analysis.canary_readout`, ``canaries=False`` skips it).
    ``source="table"``: the analyst table
    ``experiment_input(unit_id, variant, metric, value[, pre_value])`` as one experiment
    called ``name``.

    A unit's value is the sum of its finite rows, 0 without rows; a unit whose every row is
    non-finite is left out of that metric; both are counted in the row's message. Units
    seen in several variants are excluded. ``cuped``: None uses CUPED when ``pre_value``
    exists (analyst table), True asks for it (recorded data: the covariate is the same
    metric's outcomes in ``cuped_lookback`` before first exposure), False never.
    ``winsorize=q`` (0.5 < q < 1) clips each metric's unit values to its [1-q, q] quantiles.
    ``ratios`` maps a result name to (numerator metric, denominator metric).
    ``sequential`` reports asymptotic confidence sequences, tightest at ``sequential_n_opt``
    units (default: each comparison's own units), or tuned to a planned ``expected_n``.
    ``engine`` runs the row work through Ibis on that engine (:mod:`analysis.engine`;
    ``con`` is then unused and may be None).

    Raises ValueError for invalid arguments or an analyst table without the required
    columns; problems in the data never raise, they become ``message`` fields.
    """
    if winsorize is not None and not 0.5 < winsorize < 1.0:
        raise ValueError(f"winsorize must be in (0.5, 1), got {winsorize!r}")
    if sequential_n_opt is not None and not sequential_n_opt > 0:
        raise ValueError("sequential_n_opt must be positive")
    if expected_n is not None and not expected_n > 0:
        raise ValueError("expected_n must be positive")
    if sequential_n_opt is not None and expected_n is not None:
        raise ValueError("give sequential_n_opt or expected_n, not both")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    span = _span(window, "window")
    lookback = _span(cuped_lookback, "cuped_lookback")
    level = horizon_alpha(alpha) if sequential and expected_n is not None else None
    ratios = dict(ratios or {})
    inference: Inference = "sequential" if sequential else "fixed"
    notes: list[str] = []
    configs: dict[str, _Config] = {}
    scope: VersionScope | None = None
    if source == "recorded":
        configs, problem = (_newest_config(_need(con)) if engine is None
                            else _read_config(newest_config_json(engine)))
        if problem:
            notes.append(problem)
        has_pre = bool(cuped)
        # The newest version among the exposures in the window, not after it.
        if engine is None:
            scope = version_scope(_need(con), "requests", where=f"{_EXPOSED} AND "
                                  f"{time_filter(since, until)}", version=version,
                                  all_versions=all_versions)
        else:
            requests = engine.table("requests")
            scope = scope_engine(engine, "requests", exposed_condition(requests, since, until),
                                 version=version, all_versions=all_versions)
    elif source == "table":
        if since is not None or until is not None:
            notes.append("since/until ignored: the analyst table has no timestamps")
        if span is not None:
            notes.append("window ignored: the analyst table has no timestamps")
        columns = (_columns(_need(con), INPUT_TABLE) if engine is None
                   else table_columns(engine, INPUT_TABLE))
        missing = sorted({"unit_id", "variant", "metric", "value"} - columns)
        if missing:
            raise ValueError(f"{INPUT_TABLE} lacks column(s) {', '.join(missing)}")
        has_pre = "pre_value" in columns
    else:
        raise ValueError(f"source must be 'recorded' or 'table', got {source!r}")
    if engine is None:
        g = gather(_need(con), source=source, name=name, has_pre=has_pre, since=since, until=until,
                   winsorize=winsorize, ratios=ratios,
                   versions=scope.condition if scope else "TRUE",
                   window=span, lookback=lookback if has_pre else None, passes=passes)
    else:
        g = gather_engine(engine, source=source, name=name, has_pre=has_pre, since=since,
                          until=until, winsorize=winsorize, ratios=ratios, scope=scope,
                          window=span, lookback=lookback if has_pre else None, passes=passes)
    use_cuped = has_pre if cuped is None else (cuped and has_pre)
    if cuped and not has_pre:
        notes.append("CUPED needs a pre_value column; analysed without it")
    plan = _Plan(use_cuped, source == "recorded", inference, alpha, sequential_n_opt
                 if expected_n is None else expected_n, level, lookback)
    names = sorted(set(g.units) | set(g.excluded) | ({name} if source == "table" else set()))
    experiments = tuple(
        _analyze_one(exp, g, configs.get(exp), weights, control, ratios, plan, notes)
        for exp in names
    )
    method_notes = _method_notes(plan, span, source, expected_n)
    if scope is not None:
        method_notes.append(scope.note)
    readout = None
    if source == "recorded" and canaries and engine is not None and engine.con is None:
        from analysis.canary_engine import analyze_canaries_engine

        readout = analyze_canaries_engine(engine, since=since, until=until, window=span,
                                          version=version, all_versions=all_versions,
                                          alpha=alpha)
    elif source == "recorded" and canaries:
        from analysis.canary_readout import analyze_canaries

        readout = analyze_canaries(_need(con if engine is None else engine.con), since=since,
                                   until=until, window=span, version=version,
                                   all_versions=all_versions, alpha=alpha, passes=passes)
    settings = {
        "source": source,
        "since": None if since is None else str(since),
        "until": None if until is None else str(until),
        "control": control,
        "weights": dict(weights) if weights is not None else None,
        "sequential": sequential,
        "sequential_n_opt": (expected_n if expected_n is not None else sequential_n_opt)
        if sequential else None,
        "sequential_tuning": None if not sequential else (
            "expected_n" if expected_n is not None else
            "n_opt" if sequential_n_opt is not None else "own_traffic"),
        "sequential_level": level,
        "cuped": use_cuped,
        "cuped_lookback": _fmt_span(lookback) if use_cuped and source == "recorded" else None,
        "window": _fmt_span(span) if span else None,
        "winsorize": winsorize,
        "ratios": {k: list(v) for k, v in ratios.items()},
        "alpha": alpha,
        "versions": scope.to_dict() if scope else None,
    }
    return ExperimentReport(experiments, settings, tuple(method_notes), readout)
