"""Model quality on real outcomes: every model that answered labelled requests, scored alike.

DuckDB joins calls to outcomes and reduces losses and calibration bins; numpy finishes AUC with
DeLong's variance (Sun & Xu's midrank form) and the paired DeLong test of shadow vs primary.
Other figures are means of a per-request loss: normal 95% intervals, paired t-tests.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

import duckdb
import numpy as np
from scipy import stats

from analysis.load import PRIMARY_SQL, AnalysisSourceError, relations, time_filter
from analysis.report.json import jsonable
from analysis.stats import finite_or_none

__all__ = ["SCHEMA", "ModelQuality", "PairedTest", "QualityReport", "analyze_quality",
           "auc_delong", "paired_auc_delong"]

SCHEMA = "shadowcar.report.quality/1"
Kind = Literal["binary", "regression"]
_Z = float(stats.norm.ppf(0.975))
_EPS = 1e-15  # log loss clips probabilities to [eps, 1 - eps]
_BINS = 10  # expected calibration error: equal-width bins over [0, 1]
_WINDOW = re.compile(r"^(\d+)\s*([mhd])$")
_UNITS = {"m": "minute", "h": "hour", "d": "day"}
#: Per-request losses of each kind: (JSON name, SQL column).
_LOSSES: dict[str, tuple[tuple[str, str], ...]] = {
    "binary": (("log_loss", "ll"), ("brier", "br")),
    "regression": (("mae", "ae"), ("mse", "se")),
}


@dataclass(frozen=True)
class ModelQuality:
    """One backend version's quality on one route (and one time window when ``window``)."""

    route: str
    backend: str
    version: str
    roles: tuple[str, ...]
    window: datetime | None
    n: int
    positives: int | None = None
    auc: float | None = None
    auc_se: float | None = None
    auc_ci: tuple[float, float] | None = None
    log_loss: float | None = None
    log_loss_ci: tuple[float, float] | None = None
    brier: float | None = None
    brier_ci: tuple[float, float] | None = None
    ece: float | None = None
    reliability: tuple[dict[str, Any], ...] = ()
    mae: float | None = None
    mae_ci: tuple[float, float] | None = None
    rmse: float | None = None
    rmse_ci: tuple[float, float] | None = None
    message: str | None = None


@dataclass(frozen=True)
class PairedTest:
    """A shadow against its route's primary on the requests both answered (shadow - primary)."""

    route: str
    primary: str
    shadow: str
    metric: str
    method: Literal["paired t", "paired DeLong"]
    n: int
    primary_value: float | None
    shadow_value: float | None
    diff: float | None
    diff_ci: tuple[float, float] | None
    statistic: float | None
    p_value: float | None
    message: str | None = None


@dataclass(frozen=True)
class QualityReport:
    """Per-model quality overall and per window, and the paired shadow-vs-primary tests."""

    kind: Kind
    metric: str
    params: dict[str, Any]
    models: tuple[ModelQuality, ...]
    windows: tuple[ModelQuality, ...]
    comparisons: tuple[PairedTest, ...]
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form, schema ``shadowcar.report.quality/1``."""
        def plain(item: Any) -> dict[str, Any]:
            return {f.name: getattr(item, f.name) for f in fields(item)}

        out: dict[str, Any] = jsonable({
            "schema": SCHEMA, "kind": self.kind, "metric": self.metric, "params": self.params,
            "models": [plain(m) for m in self.models],
            "windows": [plain(m) for m in self.windows],
            "comparisons": [plain(c) for c in self.comparisons],
            "message": self.message,
        })
        return out




def _delong_parts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """AUCs of k score rows and their DeLong covariance (None when a class has one member).

    ``pos`` is (k, m) scores of positives, ``neg`` (k, n) of negatives; midranks give each
    positive's share of negatives below it (V10) and each negative's share above (V01).
    """
    m, n = pos.shape[1], neg.shape[1]
    tz = stats.rankdata(np.hstack([pos, neg]), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    if m < 2 or n < 2:
        return aucs, None
    v10 = (tz[:, :m] - stats.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - stats.rankdata(neg, axis=1)) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def auc_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """AUC (Mann-Whitney, ties count half) and its DeLong standard error; None when undefined."""
    y = np.asarray(labels) == 1
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        return None, None
    aucs, cov = _delong_parts(s[y][None, :], s[~y][None, :])
    se = None if cov is None else float(np.sqrt(max(cov[0, 0], 0.0)))
    return float(aucs[0]), se


def paired_auc_delong(
    first: np.ndarray, second: np.ndarray, labels: np.ndarray
) -> tuple[float, float, float | None]:
    """(AUC first, AUC second, DeLong SE of second - first) on shared labels (both classes).

    The paired test is ``z = (second - first) / se``; the SE is None when it is undefined.
    """
    y = np.asarray(labels) == 1
    both = np.vstack([np.asarray(first, np.float64), np.asarray(second, np.float64)])
    aucs, cov = _delong_parts(both[:, y], both[:, ~y])
    var = None if cov is None else float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(var)) if var is not None and var > 1e-300 else None
    return float(aucs[0]), float(aucs[1]), se


def _ci(mean: float | None, var: float | None, n: int) -> tuple[float, float] | None:
    if mean is None or var is None or n < 2:
        return None
    return (mean - _Z * float(np.sqrt(max(var, 0.0) / n)),
            mean + _Z * float(np.sqrt(max(var, 0.0) / n)))


def _bucket(window: str | None) -> str:
    if window is None:
        return "NULL::TIMESTAMP"
    match = _WINDOW.match(window.strip())
    if not match or int(match.group(1)) == 0:
        raise AnalysisSourceError(f"window {window!r}: use a count and a unit, e.g. 1h or 1d")
    return f"time_bucket(INTERVAL '{int(match.group(1))} {_UNITS[match.group(2)]}', ts)"


def analyze_quality(
    con: duckdb.DuckDBPyConnection,
    *,
    metric: str = "label",
    kind: Kind = "binary",
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    window: str | None = None,
    route: str | None = None,
) -> QualityReport:
    """Score every model that answered requests with an outcome ``metric`` on those requests.

    ``binary``: outcomes are 0/1 labels and ``calls.score`` the predicted probability.
    ``regression``: outcomes are values and the prediction is a one-element ``calls.output``
    (else ``calls.score``). A request's outcome is its latest event for ``metric``; calls are
    selected by their ``ts`` in ``[since, until)``; ``window`` (``1h``, ``1d``) adds rows per
    model and time bucket.
    """
    params: dict[str, Any] = {"metric": metric, "kind": kind, "since": since, "until": until,
                              "window": window, "route": route}
    if kind not in _LOSSES:
        raise AnalysisSourceError(f"kind {kind!r}: use binary or regression")
    bucket = _bucket(window)
    if missing := {"calls", "outcomes"} - relations(con):
        return QualityReport(kind, metric, params, (), (), (),
                             f"the source has no {' or '.join(sorted(missing))} table")
    table = f"_sc_quality_{uuid.uuid4().hex[:12]}"
    try:
        invalid = _extract(con, table, metric, kind, since, until, route)
        models = _models(con, table, kind, "NULL::TIMESTAMP")
        windows = _models(con, table, kind, bucket) if window else []
        comparisons = _comparisons(con, table, kind)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}").fetchall()
    params["invalid_outcomes"] = invalid
    message = None if models else f"no successful call answered a {metric!r} outcome"
    return QualityReport(kind, metric, params, tuple(models), tuple(windows),
                         tuple(comparisons), message)


def _extract(con: duckdb.DuckDBPyConnection, table: str, metric: str, kind: Kind,
             since: str | datetime | None, until: str | datetime | None,
             route: str | None) -> int:
    """One row per (route, backend, version, request) with its outcome and per-request losses.

    Returns how many labelled requests were left out because their outcome is not 0/1.
    """
    where = time_filter(since, until)
    if route is not None:
        where += " AND route = '" + route.replace("'", "''") + "'"
    pred = "score" if kind == "binary" else (
        "CASE WHEN len(output) = 1 THEN output[1] ELSE score END")
    if kind == "binary":
        valid = "y IN (0, 1)"
        clip = f"least(greatest(pred, {_EPS}), 1 - {_EPS})"
        losses = f"""CASE WHEN p_ok THEN -(y * ln({clip}) + (1 - y) * ln(1 - {clip})) END AS ll,
                     CASE WHEN p_ok THEN (pred - y) * (pred - y) END AS br,
                     least(floor(pred * {_BINS}), {_BINS - 1})::INT AS bin"""
    else:
        valid = "isfinite(y)"
        losses = "abs(pred - y) AS ae, (pred - y) * (pred - y) AS se"
    con.execute(f"""
        CREATE TEMP TABLE {table} AS
        WITH lab AS (
            SELECT request_id, arg_max(value, coalesce(ts, received_at)) AS y FROM outcomes
            WHERE metric = ? AND request_id IS NOT NULL AND value IS NOT NULL
            GROUP BY request_id
        ), c AS (
            SELECT request_id, route, backend, coalesce(backend_version, '') AS version, role,
                   coalesce({PRIMARY_SQL}, false) AS is_primary, ts, {pred} AS pred
            FROM calls WHERE coalesce(status, 'OK') = 'OK' AND {where}
        ), one AS (
            SELECT route, backend, version, request_id, min(ts) AS ts,
                   arg_min(pred, ts) AS pred, bool_or(is_primary) AS is_primary,
                   bool_or(role = 'shadow') AS is_shadow, list(DISTINCT role) AS roles,
                   any_value(y) AS y
            FROM c JOIN lab USING (request_id) WHERE isfinite(pred) GROUP BY ALL
        )
        SELECT *, {losses}
        FROM (SELECT *, pred BETWEEN 0 AND 1 AS p_ok FROM one WHERE {valid})
    """, [metric]).fetchall()
    if kind != "binary":
        return 0
    rows = con.execute("SELECT count(DISTINCT request_id) FROM outcomes WHERE metric = ? "
                       "AND request_id IS NOT NULL AND value NOT IN (0, 1)", [metric]).fetchall()
    return int(rows[0][0])


def _models(con: duckdb.DuckDBPyConnection, table: str, kind: Kind,
            bucket: str) -> list[ModelQuality]:
    keys = "route, backend, version, bucket"
    moments = ", ".join(f"avg({col}) AS m_{col}, var_samp({col}) AS v_{col}"
                        for _, col in _LOSSES[kind])
    extra = "sum(y)::BIGINT AS positives, count(*) FILTER (WHERE NOT p_ok) AS n_bad" \
        if kind == "binary" else "NULL AS positives, 0 AS n_bad"
    result = con.execute(f"""
        SELECT {keys}, count(*) AS n, list_sort(list_distinct(flatten(list(roles)))) AS roles,
               {extra}, {moments}
        FROM (SELECT *, {bucket} AS bucket FROM {table}) GROUP BY ALL ORDER BY {keys} NULLS LAST
    """)
    names = [d[0] for d in result.description]
    records = [dict(zip(names, r, strict=True)) for r in result.fetchall()]
    if kind == "regression":
        return [_regression(r) for r in records]
    bins = _reliability(con, table, bucket)
    arrays = con.execute(f"SELECT pred, y FROM (SELECT *, {bucket} AS bucket FROM {table}) "
                         f"ORDER BY {keys} NULLS LAST").fetchnumpy()
    pred, y = (np.asarray(arrays[k], dtype=np.float64) for k in ("pred", "y"))
    bounds = np.cumsum([0] + [int(r["n"]) for r in records])
    return [_binary(r, pred[a:b], y[a:b],
                    bins.get((r["route"], r["backend"], r["version"], r["bucket"]), []))
            for r, a, b in zip(records, bounds[:-1], bounds[1:], strict=True)]


def _base(r: dict[str, Any]) -> dict[str, Any]:
    return {"route": str(r["route"]), "backend": str(r["backend"]), "version": str(r["version"]),
            "roles": tuple(str(x) for x in r["roles"]), "window": r["bucket"], "n": int(r["n"])}


def _regression(r: dict[str, Any]) -> ModelQuality:
    """MAE with its normal interval; RMSE with the root of the MSE's interval."""
    n, mae, mse = int(r["n"]), finite_or_none(r["m_ae"]), finite_or_none(r["m_se"])
    mse_ci = _ci(mse, finite_or_none(r["v_se"]), n)
    return ModelQuality(
        **_base(r), mae=mae, mae_ci=_ci(mae, finite_or_none(r["v_ae"]), n),
        rmse=None if mse is None else float(np.sqrt(mse)),
        rmse_ci=None if mse_ci is None else (float(np.sqrt(max(mse_ci[0], 0.0))),
                                             float(np.sqrt(mse_ci[1]))),
        message="fewer than two labelled requests: no intervals" if n < 2 else None)


def _binary(r: dict[str, Any], pred: np.ndarray, y: np.ndarray,
            bins: list[dict[str, Any]]) -> ModelQuality:
    return binary_quality(r, *auc_delong(pred, y), bins)


def binary_quality(r: dict[str, Any], auc: float | None, se: float | None,
                   bins: list[dict[str, Any]]) -> ModelQuality:
    """A binary model's figures from its row of sums (``n``, ``positives``, ``n_bad``, the
    losses' means and variances), its AUC and DeLong SE and its reliability bins; both
    engines' rows come here."""
    n, positives, n_bad = int(r["n"]), int(r["positives"]), int(r["n_bad"])
    probabilistic = n_bad == 0
    notes = [text for broken, text in (
        (auc is None, "only one class among the outcomes: AUC undefined"),
        (auc is not None and se is None, "a class has a single request: no AUC interval"),
        (n_bad > 0, f"{n_bad} scores outside [0, 1]: log loss, Brier and ECE need probabilities"),
        (n < 2, "fewer than two labelled requests: no intervals")) if broken]
    auc_ci = None if auc is None or se is None else (max(auc - _Z * se, 0.0),
                                                    min(auc + _Z * se, 1.0))
    ll = finite_or_none(r["m_ll"]) if probabilistic else None
    br = finite_or_none(r["m_br"]) if probabilistic else None
    bins = bins if probabilistic else []
    ece = sum(b["n"] / n * abs(b["observed"] - b["mean_score"]) for b in bins) if bins else None
    return ModelQuality(
        **_base(r), positives=positives, auc=auc, auc_se=se, auc_ci=auc_ci,
        log_loss=ll, log_loss_ci=_ci(ll, finite_or_none(r["v_ll"]), n),
        brier=br, brier_ci=_ci(br, finite_or_none(r["v_br"]), n),
        ece=ece, reliability=tuple(bins),
        message="; ".join(notes) or None,
    )


def _reliability(con: duckdb.DuckDBPyConnection, table: str,
                 bucket: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    rows = con.execute(f"""
        SELECT route, backend, version, bucket, bin, count(*), avg(pred), avg(y)
        FROM (SELECT *, {bucket} AS bucket FROM {table}) WHERE p_ok
        GROUP BY ALL ORDER BY route, backend, version, bucket, bin
    """).fetchall()
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for route, backend, version, bkt, b, n, mean_score, observed in rows:
        out.setdefault((route, backend, version, bkt), []).append({
            "low": b / _BINS, "high": (b + 1) / _BINS, "n": int(n),
            "mean_score": float(mean_score), "observed": float(observed)})
    return out


def _comparisons(con: duckdb.DuckDBPyConnection, table: str, kind: Kind) -> list[PairedTest]:
    cols = _LOSSES[kind]
    moments = ", ".join(
        f"count(s.{c} - p.{c}) AS n_{c}, avg(p.{c}) AS p_{c}, avg(s.{c}) AS s_{c}, "
        f"avg(s.{c} - p.{c}) AS m_{c}, var_samp(s.{c} - p.{c}) AS v_{c}" for _, c in cols)
    keys = "s.route, p.backend || '@' || p.version, s.backend || '@' || s.version"
    join = (f"FROM (SELECT * FROM {table} WHERE is_shadow AND NOT is_primary) s "
            f"JOIN (SELECT * FROM {table} WHERE is_primary) p "
            "ON p.route = s.route AND p.request_id = s.request_id")
    rows = con.execute(f"SELECT {keys}, count(*), {moments} {join} "
                       f"GROUP BY ALL ORDER BY ALL").fetchall()
    out: list[PairedTest] = []
    for row in rows:
        route, primary, shadow = str(row[0]), str(row[1]), str(row[2])
        for k, (name, _) in enumerate(cols):
            n_c, p_mean, s_mean, mean, var = row[4 + 5 * k: 9 + 5 * k]
            out.append(_paired_t(route, primary, shadow, name, int(n_c), finite_or_none(p_mean),
                                 finite_or_none(s_mean), finite_or_none(mean), finite_or_none(var)))
    if kind == "binary" and rows:
        arrays = con.execute(f"SELECT p.pred AS ps, s.pred AS ss, s.y AS y {join} "
                             f"ORDER BY {keys}").fetchnumpy()
        ps, ss, y = (np.asarray(arrays[k], np.float64) for k in ("ps", "ss", "y"))
        bounds = np.cumsum([0] + [int(r[3]) for r in rows])
        out += [_paired_auc(str(r[0]), str(r[1]), str(r[2]), ps[a:b], ss[a:b], y[a:b])
                for r, a, b in zip(rows, bounds[:-1], bounds[1:], strict=True)]
    return out


def _paired_t(route: str, primary: str, shadow: str, name: str, n: int, p_mean: float | None,
              s_mean: float | None, mean: float | None, var: float | None) -> PairedTest:
    name = "squared_error" if name == "mse" else name  # the losses the test runs on
    if n < 2 or mean is None or var is None or var <= 0:
        message = ("fewer than two paired requests" if n < 2 or mean is None or var is None
                   else "the per-request loss differences do not vary")
        return PairedTest(route, primary, shadow, name, "paired t", n, p_mean, s_mean, mean,
                          None, None, None, message)
    stat = mean / float(np.sqrt(var / n))
    return PairedTest(route, primary, shadow, name, "paired t", n, p_mean, s_mean, mean,
                      _ci(mean, var, n), stat, float(2 * stats.t.sf(abs(stat), n - 1)))


def _paired_auc(route: str, primary: str, shadow: str, ps: np.ndarray, ss: np.ndarray,
                y: np.ndarray) -> PairedTest:
    one_class = bool((y == 1).all() or (y == 0).all())
    return paired_auc_test(route, primary, shadow, int(y.size),
                           None if one_class else paired_auc_delong(ps, ss, y))


def paired_auc_test(route: str, primary: str, shadow: str, n: int,
                    aucs: tuple[float, float, float | None] | None) -> PairedTest:
    """The paired DeLong test from (AUC primary, AUC shadow, SE of the difference), None
    when the outcomes have one class; both engines' figures come here."""
    head: tuple[str, str, str, str, Literal["paired DeLong"], int] = (
        route, primary, shadow, "auc", "paired DeLong", n)
    if aucs is None:
        return PairedTest(*head, None, None, None, None, None, None,
                          "only one class among the outcomes")
    a_p, a_s, se = aucs
    if se is None:
        return PairedTest(*head, a_p, a_s, a_s - a_p, None, None, None,
                          "the AUC difference has no variance")
    z = (a_s - a_p) / se
    return PairedTest(*head, a_p, a_s, a_s - a_p, (a_s - a_p - _Z * se, a_s - a_p + _Z * se), z,
                      float(2 * stats.norm.sf(abs(z))))
