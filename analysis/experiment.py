"""A/B experiment analysis: DuckDB reduces units to per-variant sufficient statistics,
:mod:`analysis.significance` turns them into one report (SRM, effects, adjusted p-values).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import duckdb

from analysis.load import sql_quote, time_filter
from analysis.significance import (
    DEFAULT_SEQUENTIAL_N_OPT,
    Comparison,
    Inference,
    SrmResult,
    benjamini_hochberg,
    cuped_test,
    holm,
    proportions_test,
    ratio_test,
    srm_test,
    welch_test,
)
from analysis.stats import PairStats, SampleStats

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

__all__ = [
    "REPORT_SCHEMA",
    "ExperimentReport",
    "ExperimentResult",
    "ResultRow",
    "Source",
    "analyze_experiments",
]

REPORT_SCHEMA = "shadowcar.report.experiment/1"
#: Name given to the single experiment of an analyst table when none is passed.
DEFAULT_TABLE_EXPERIMENT = "experiment"
#: The analyst table read by ``source="table"``.
INPUT_TABLE = "experiment_input"

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "experiments": [e.to_dict() for e in self.experiments],
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


# ------------------------------------------------------------------- SQL layer


@dataclass(frozen=True)
class _Config:
    """What the newest recorded configuration says about one experiment."""

    order: tuple[str, ...]
    weights: dict[str, float] | None


@dataclass
class _Gathered:
    """Per-experiment sufficient statistics as read back from DuckDB."""

    #: experiment -> variant -> distinct units
    units: dict[str, dict[str, int]] = field(default_factory=dict)
    #: experiment -> units seen in several variants (left out)
    excluded: dict[str, int] = field(default_factory=dict)
    #: (experiment, variant, metric) -> _MetricSums
    metrics: dict[tuple[str, str, str], _MetricSums] = field(default_factory=dict)
    #: (experiment, variant, ratio) -> sum over units of numerator * denominator
    cross: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def present(self, experiment: str) -> list[str]:
        """Metrics with at least one row for this experiment's units."""
        return sorted({m for (e, _, m), s in self.metrics.items() if e == experiment and s.rows})


@dataclass(frozen=True)
class _MetricSums:
    sum: float
    sum_sq: float
    sum_pre: float
    sum_pre_sq: float
    sum_cross: float
    binary: bool
    bad: int
    rows: int

    @staticmethod
    def zero() -> _MetricSums:
        return _MetricSums(0.0, 0.0, 0.0, 0.0, 0.0, True, 0, 0)


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
    if row is None or row[0] is None:
        return {}, None
    try:
        cfg = json.loads(row[0])
        out: dict[str, _Config] = {}
        for route in cfg.get("routes") or []:
            exp = (route or {}).get("experiment") or {}
            if not exp.get("name"):
                continue
            variants = exp.get("variants") or []
            order = tuple(str(v["name"]) for v in variants)
            weighted = {str(v["name"]): float(v["weight"])
                        for v in variants if v.get("weight") is not None}
            out[str(exp["name"])] = _Config(order, weighted or None)
        return out, None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return {}, f"newest configs row is unreadable ({exc}); weights and order unknown"


def _pivot(metrics: Sequence[str], has_pre: bool, counts: bool) -> str:
    """Per-unit columns v_i (value sum), p_i (pre_value sum) and, with ``counts``, r_i
    (rows) and b_i (non-finite values)."""
    cols = []
    for i, m in enumerate(metrics):
        is_m = f"metric = {sql_quote(m)}"
        cols.append(f"coalesce(sum(value) FILTER (WHERE {is_m} AND isfinite(value)), 0) AS v_{i}")
        if has_pre:
            cols.append(f"coalesce(sum(pre_value) FILTER (WHERE {is_m} AND isfinite(pre_value)),"
                        f" 0) AS p_{i}")
        if not counts:
            continue
        cols.append(f"count(*) FILTER (WHERE {is_m}) AS r_{i}")
        cols.append(f"count(*) FILTER (WHERE {is_m} AND (value IS NULL OR NOT isfinite(value)))"
                    f" AS b_{i}")
    return ",\n".join(cols)


def _recorded_units(metrics: Sequence[str], since: Any, until: Any) -> tuple[str, list[Any]]:
    """``unit_rows`` CTE body for the recorded schema: one row per (experiment, unit)."""

    # the same bounds as every other report: ISO times, datetimes or ages ("24h")
    req_w = f" AND {time_filter(since, until, 'ts')}"
    out_w = f" AND {time_filter(since, until, 'o.ts')}"
    carry = [f"coalesce(p.{c}_{i}, 0) AS {c}_{i}"
             for i in range(len(metrics)) for c in ("v", "r", "b")]
    per_unit = (
        f"""SELECT unit_id, {_pivot(metrics, False, True)}
            FROM o WHERE unit_id IS NOT NULL GROUP BY unit_id"""
        if metrics else "SELECT NULL::VARCHAR AS unit_id WHERE false"
    )
    # Outcomes reach a unit directly or through the request that carried them.
    sql = f"""
        exposed AS (
            SELECT experiment, unit_id, min(variant) AS variant,
                   min(variant) = max(variant) AS single
            FROM requests
            WHERE exposed AND experiment IS NOT NULL AND unit_id IS NOT NULL
                  AND variant IS NOT NULL{req_w}
            GROUP BY experiment, unit_id
        ), orphan AS (
            SELECT request_id, any_value(unit_id) AS unit_id FROM requests
            WHERE request_id IN (SELECT request_id FROM outcomes WHERE unit_id IS NULL)
            GROUP BY request_id
        ), o AS (
            SELECT coalesce(o.unit_id, r.unit_id) AS unit_id, o.metric, o.value
            FROM outcomes o LEFT JOIN orphan r
                 ON o.unit_id IS NULL AND o.request_id = r.request_id
            WHERE o.metric IS NOT NULL{out_w}
        ), per_unit AS ({per_unit}
        ), unit_rows AS (
            SELECT e.experiment, e.variant, e.single{''.join(', ' + c for c in carry)}
            FROM exposed e LEFT JOIN per_unit p ON p.unit_id = e.unit_id
        )"""
    return sql, []


def _table_units(metrics: Sequence[str], name: str, has_pre: bool) -> str:
    """``unit_rows`` CTE body for the analyst table: one row per unit.

    Row and non-finite counts are additive over rows, so :func:`_table_counts` takes them
    straight from the table and this wide aggregate stays narrow (it is the costly one).
    """
    pivot = (",\n" + _pivot(metrics, has_pre, False)) if metrics else ""
    return f"""
        unit_rows AS (
            SELECT {sql_quote(name)} AS experiment, CAST(min(variant) AS VARCHAR) AS variant,
                   min(variant) = max(variant) AS single{pivot}
            FROM {INPUT_TABLE}
            WHERE unit_id IS NOT NULL AND variant IS NOT NULL
            GROUP BY unit_id
        )"""


def _table_counts(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], tuple[int, int]]:
    """(variant, metric) -> (rows, non-finite values) of the analyst table."""
    return {
        (str(v), str(m)): (int(r), int(b))
        for v, m, r, b in con.execute(
            f"""SELECT variant, metric, count(*),
                   count(*) FILTER (WHERE value IS NULL OR NOT isfinite(value))
            FROM {INPUT_TABLE}
            WHERE unit_id IS NOT NULL AND variant IS NOT NULL AND metric IS NOT NULL
            GROUP BY ALL"""
        ).fetchall()
    }


def _clip(metrics: Sequence[str], level: float) -> str:
    """Clip each metric's unit values to its [1 - level, level] linear quantiles over the
    experiment's units (units without rows count as 0, so all units are in)."""
    qs = [f"quantile_cont(v_{i}, [{1.0 - level!r}, {level!r}]) AS q_{i}"
          for i in range(len(metrics))]
    clipped = [f"least(greatest(u.v_{i}, q.q_{i}[1]), q.q_{i}[2]) AS v_{i}"
               for i in range(len(metrics))]
    return f""", bounds AS (
            SELECT experiment, {', '.join(qs)} FROM unit_rows WHERE single GROUP BY experiment
        ), clipped AS (
            SELECT u.* REPLACE ({', '.join(clipped)})
            FROM unit_rows u JOIN bounds q ON q.experiment = u.experiment
        )"""


def _gather(
    con: duckdb.DuckDBPyConnection,
    *,
    source: Source,
    name: str,
    has_pre: bool,
    since: Any,
    until: Any,
    winsorize: float | None,
    ratios: Mapping[str, tuple[str, str]],
) -> _Gathered:
    """One SQL statement: rows -> units (one wide row each) -> per-variant sums.

    Metric names come first (a cheap DISTINCT) so the per-unit pivot has fixed columns.
    """
    table = INPUT_TABLE if source == "table" else "outcomes"
    metrics = [str(r[0]) for r in con.execute(
        f"SELECT DISTINCT metric FROM {table} WHERE metric IS NOT NULL ORDER BY 1"
    ).fetchall()]
    params: list[Any] = []
    counts: dict[tuple[str, str], tuple[int, int]] | None = None
    if source == "table":
        ctes = _table_units(metrics, name, has_pre)
        counts = _table_counts(con)
    else:
        ctes, params = _recorded_units(metrics, since, until)
    relation = "unit_rows"
    if winsorize is not None and metrics:
        ctes += _clip(metrics, winsorize)
        relation = "clipped"
    index = {m: i for i, m in enumerate(metrics)}
    aggs = ["count(*)"]
    for i in range(len(metrics)):
        p = f"p_{i}" if has_pre else "0"
        aggs += [f"sum(v_{i})", f"sum(v_{i} * v_{i})", f"sum({p})", f"sum({p} * {p})",
                 f"sum(v_{i} * {p})", f"bool_and(v_{i} = 0 OR v_{i} = 1)",
                 *((f"sum(b_{i})", f"sum(r_{i})") if counts is None else ("0", "0"))]
    usable = {k: (index[a], index[b]) for k, (a, b) in ratios.items()
              if a in index and b in index}
    aggs += [f"sum(v_{a} * v_{b})" for a, b in usable.values()]
    sql = f"""WITH {ctes}
        SELECT experiment, CASE WHEN single THEN variant END AS variant, {', '.join(aggs)}
        FROM {relation} GROUP BY ALL"""
    g = _Gathered()
    width = 8
    for row in con.execute(sql, params).fetchall():
        exp, variant, n = str(row[0]), row[1], int(row[2])
        if variant is None:
            g.excluded[exp] = n
            continue
        variant = str(variant)
        g.units.setdefault(exp, {})[variant] = n
        for m, i in index.items():
            s = row[3 + width * i: 3 + width * (i + 1)]
            rows, bad = (int(s[7] or 0), int(s[6] or 0)) if counts is None else \
                counts.get((variant, m), (0, 0))
            g.metrics[(exp, variant, m)] = _MetricSums(
                float(s[0] or 0), float(s[1] or 0), float(s[2] or 0), float(s[3] or 0),
                float(s[4] or 0), bool(s[5]), bad, rows)
        base = 3 + width * len(metrics)
        for j, ratio in enumerate(usable):
            g.cross[(exp, variant, ratio)] = float(row[base + j] or 0)
    return g


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


def _row_notes(bad_a: int, bad_b: int, srm: SrmResult) -> list[str]:
    notes = []
    if bad_a or bad_b:
        notes.append(f"ignored non-finite values (NaN/inf/NULL): control {bad_a}, "
                     f"variant {bad_b}")
    if srm.flag:
        notes.append("sample ratio mismatch flagged: interpret with care")
    return notes


def _with_notes(c: Comparison, notes: Sequence[str]) -> Comparison:
    if not notes:
        return c
    return replace(c, message="; ".join([*([c.message] if c.message else []), *notes]))


def _analyze_one(
    name: str,
    g: _Gathered,
    cfg: _Config | None,
    weights: Mapping[str, float] | None,
    control: str | None,
    ratios: Mapping[str, tuple[str, str]],
    *,
    cuped: bool,
    inference: Inference,
    n_opt: float,
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
    if chosen is None:
        return ExperimentResult(name, None, variants, srm, (),
                                "; ".join([*messages, problem or "no control"]), excluded)
    others = [v for v in variants if v != chosen]
    metrics = g.present(name)
    if not metrics:
        messages.append("no outcomes for the exposed units")

    def sums(variant: str, metric: str) -> tuple[int, _MetricSums]:
        found = g.metrics.get((name, variant, metric))
        return units.get(variant, 0), found or _MetricSums.zero()

    def pair(n: int, s: _MetricSums) -> PairStats:
        return PairStats(n, s.sum, s.sum_sq, s.sum_pre, s.sum_pre_sq, s.sum_cross)

    rows: list[ResultRow] = []
    for metric in metrics:
        for variant in others:
            (na, sa), (nb, sb) = sums(chosen, metric), sums(variant, metric)
            ya, yb = SampleStats(na, sa.sum, sa.sum_sq), SampleStats(nb, sb.sum, sb.sum_sq)
            extra: dict[str, Any] = {}
            if cuped:
                comp = cuped_test(pair(na, sa), pair(nb, sb), inference=inference, n_opt=n_opt)
            else:
                comp = welch_test(ya, yb, inference=inference, n_opt=n_opt)
            if sa.binary and sb.binary and na > 0 and nb > 0:
                extra["p_value_ztest"] = proportions_test(ya, yb).p_value
            comp = _with_notes(comp, _row_notes(sa.bad, sb.bad, srm))
            rows.append(ResultRow(metric, variant, chosen, "mean", comp, extra=extra))
    for ratio, (num, den) in ratios.items():
        missing = [m for m in (num, den) if m not in metrics]
        for variant in others:
            arms = []
            for v in (chosen, variant):
                (n, y), (_, x) = sums(v, num), sums(v, den)
                cross = g.cross.get((name, v, ratio), 0.0)
                arms.append(PairStats(n, y.sum, y.sum_sq, x.sum, x.sum_sq, cross))
            notes_r = _row_notes(sums(chosen, num)[1].bad + sums(chosen, den)[1].bad,
                                 sums(variant, num)[1].bad + sums(variant, den)[1].bad, srm)
            if missing:
                notes_r.insert(0, f"metric(s) {', '.join(map(repr, missing))} have no outcomes")
            comp = ratio_test(arms[0], arms[1], inference=inference, n_opt=n_opt)
            rows.append(ResultRow(ratio, variant, chosen, "ratio", _with_notes(comp, notes_r),
                                  extra={"numerator": num, "denominator": den}))
    pvals = [r.comparison.p_value for r in rows]
    rows = [replace(r, p_value_holm=h, p_value_bh=b)
            for r, h, b in zip(rows, holm(pvals), benjamini_hochberg(pvals), strict=True)]
    return ExperimentResult(name, chosen, variants, srm, tuple(rows),
                            "; ".join(messages) or None, excluded)


def analyze_experiments(
    con: duckdb.DuckDBPyConnection,
    *,
    source: Source = "recorded",
    name: str = DEFAULT_TABLE_EXPERIMENT,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    sequential: bool = False,
    sequential_n_opt: float = DEFAULT_SEQUENTIAL_N_OPT,
    cuped: bool | None = None,
    winsorize: float | None = None,
    ratios: Mapping[str, tuple[str, str]] | None = None,
) -> ExperimentReport:
    """Analyse every experiment in ``con``.

    ``source="recorded"``: tables/views ``requests``, ``outcomes``, ``configs`` in the
    recorded schema; exposure is an exposed request of an experiment, and weights and
    variant order come from the newest ``configs`` row unless ``weights`` is given.
    Outcomes join by unit_id, or by request_id to that request's unit; ``since``/``until``
    bound both requests.ts and outcomes.ts (half-open). ``source="table"``: the analyst
    table ``experiment_input(unit_id, variant, metric, value[, pre_value])`` as one
    experiment called ``name``.

    A unit's value is the sum of its rows, 0 without rows; non-finite values are ignored
    and counted in the row's message; units seen in several variants are excluded.
    ``cuped``: None uses CUPED when ``pre_value`` exists, True asks for it, False never.
    ``winsorize=q`` (0.5 < q < 1) clips each metric's unit values to its [1-q, q] quantiles.
    ``ratios`` maps a result name to (numerator metric, denominator metric).
    ``sequential`` reports asymptotic confidence sequences (see significance).

    Raises ValueError for invalid arguments or an analyst table without the required
    columns; problems in the data never raise, they become ``message`` fields.
    """
    if winsorize is not None and not 0.5 < winsorize < 1.0:
        raise ValueError(f"winsorize must be in (0.5, 1), got {winsorize!r}")
    if sequential_n_opt <= 0:
        raise ValueError("sequential_n_opt must be positive")
    ratios = dict(ratios or {})
    inference: Inference = "sequential" if sequential else "fixed"
    notes: list[str] = []
    configs: dict[str, _Config] = {}
    if source == "recorded":
        configs, problem = _newest_config(con)
        if problem:
            notes.append(problem)
        has_pre = False
    elif source == "table":
        if since is not None or until is not None:
            notes.append("since/until ignored: the analyst table has no timestamps")
        columns = _columns(con, INPUT_TABLE)
        missing = sorted({"unit_id", "variant", "metric", "value"} - columns)
        if missing:
            raise ValueError(f"{INPUT_TABLE} lacks column(s) {', '.join(missing)}")
        has_pre = "pre_value" in columns
    else:
        raise ValueError(f"source must be 'recorded' or 'table', got {source!r}")
    g = _gather(con, source=source, name=name, has_pre=has_pre, since=since, until=until,
                winsorize=winsorize, ratios=ratios)
    use_cuped = has_pre if cuped is None else (cuped and has_pre)
    if cuped and not has_pre:
        notes.append("CUPED needs a pre_value column; analysed without it")
    names = sorted(set(g.units) | set(g.excluded) | ({name} if source == "table" else set()))
    experiments = tuple(
        _analyze_one(exp, g, configs.get(exp), weights, control, ratios,
                     cuped=use_cuped, inference=inference, n_opt=sequential_n_opt,
                     notes=notes)
        for exp in names
    )
    settings = {
        "source": source,
        "since": None if since is None else str(since),
        "until": None if until is None else str(until),
        "control": control,
        "weights": dict(weights) if weights is not None else None,
        "sequential": sequential,
        "sequential_n_opt": sequential_n_opt if sequential else None,
        "cuped": use_cuped,
        "winsorize": winsorize,
        "ratios": {k: list(v) for k, v in ratios.items()},
        "alpha": 0.05,
    }
    return ExperimentReport(experiments, settings)

