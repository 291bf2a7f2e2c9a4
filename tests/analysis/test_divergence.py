"""Divergence figures against independent references (scipy, numpy, statsmodels) on fixed data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.proportion import proportion_confint

from analysis.distribution import compare_distributions, spearman
from analysis.divergence import analyze_divergence
from analysis.divergence_pairs import join_passes
from analysis.load import open_source
from analysis.paired_figures import BYTES_PER_PAIR
from sidecar.sink.schema import migrate

ROUTE = "/inference.GRPCInferenceService/ModelInfer"
CONFIG = {
    "routes": [{"match": ROUTE, "primary": "a",
                "shadows": [{"backend": "b"}, {"backend": "r", "replica": True}]}]
}
RTOL = 1e-9


def numpy_plots(primary: np.ndarray, shadow: np.ndarray, bins: int = 30) -> dict[str, Any]:
    """The report's score and difference histograms written with numpy (the reference the
    engine's exact bins are checked against)."""
    if primary.size == 0:
        return {}
    low = float(min(primary.min(), shadow.min()))
    high = float(max(primary.max(), shadow.max()))
    if not high > low:
        return {}
    edges = np.linspace(low, high, bins + 1)
    diff = shadow - primary
    d_low, d_high = float(diff.min()), float(diff.max())
    # Differences within a few ulps (a replica) get a drawable range.
    pad = max(abs(d_low), abs(d_high), 1.0) * 1e-9 if d_high - d_low < 1e-9 else 0.0
    d_counts, d_edges = np.histogram(diff, bins=bins, range=(d_low - pad, d_high + pad))
    return {
        "score_hist": {"edges": edges.tolist(),
                       "primary": np.histogram(primary, bins=edges)[0].tolist(),
                       "shadow": np.histogram(shadow, bins=edges)[0].tolist()},
        "diff_hist": {"edges": d_edges.tolist(), "counts": d_counts.tolist()},
    }


def _design_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """DESIGN section 5, written out independently of analysis.distribution."""
    edges = np.quantile(expected, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])

    def shares(x: np.ndarray) -> np.ndarray:
        counts = np.zeros(10)
        for i in range(10):
            low = -np.inf if i == 0 else edges[i - 1]
            high = np.inf if i == 9 else edges[i]
            counts[i] = np.sum((x > low) & (x <= high))
        return np.maximum(counts / x.size, 1e-4)

    p, s = shares(expected), shares(actual)
    return float(np.sum((s - p) * np.log(s / p)))


def _calls_frame(seed: int = 7, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2024-03-01")
    primary = np.round(rng.beta(2, 3, n), 2)  # rounding makes rank ties
    shadow = np.clip(np.round(primary + rng.normal(0.03, 0.08, n), 2), 0, 1)
    replica = np.clip(primary + rng.normal(0, 0.005, n), 0, 1)
    rows: list[dict[str, Any]] = []
    for backend, role, scores in (("a", "primary", primary), ("b", "shadow", shadow),
                                  ("r", "shadow", replica)):
        for i in range(n):
            status = "OK"
            if backend == "b" and i % 40 == 3:
                status = "DROPPED"
            elif backend == "b" and i % 50 == 7:
                status = "DEADLINE_EXCEEDED"
            ok = status == "OK"
            score = float(scores[i]) if ok else None
            rows.append({
                "request_id": f"q{i:04d}", "ts": base + pd.Timedelta(seconds=i), "route": ROUTE,
                "backend": backend, "role": role, "served": role == "primary", "status": status,
                "latency_ms": None if status == "DROPPED" else float(5 + rng.gamma(2, 2)),
                "output": [1 - score, score] if ok else None, "score": score,
                "label": str(int(score > 0.5)) if ok else None,
            })
    rows.append({"request_id": "orphan", "ts": base, "route": ROUTE, "backend": "b",
                 "role": "shadow", "served": False, "status": "OK", "latency_ms": 3.0,
                 "output": [0.5, 0.5], "score": 0.5, "label": "0"})
    return pd.DataFrame(rows)


def _make_db(path: Path, frame: pd.DataFrame, config: dict[str, Any] | None = None) -> str:
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("frame", frame)
    con.execute("INSERT INTO calls BY NAME SELECT * FROM frame")
    if config is not None:
        con.execute("INSERT INTO configs VALUES ('v1', TIMESTAMP '2024-01-01', ?)",
                    [json.dumps(config)])
    con.close()
    return str(path)


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, pd.DataFrame]:
    frame = _calls_frame()
    return _make_db(tmp_path / "rec.duckdb", frame, CONFIG), frame


def _pair(report: dict[str, Any], shadow: str) -> dict[str, Any]:
    return next(p for p in report["pairs"] if p["shadow"] == shadow)


def _reference_pairs(frame: pd.DataFrame, shadow: str) -> pd.DataFrame:
    prim = frame[frame.role == "primary"]
    shad = frame[(frame.backend == shadow) & (frame.request_id != "orphan")]
    return prim.merge(shad, on="request_id", suffixes=("_p", "_s"))


def test_numeric_figures_match_references(recorded: tuple[str, pd.DataFrame]) -> None:
    path, frame = recorded
    report = analyze_divergence(open_source(db=path)).to_dict()
    pair = _pair(report, "b")
    merged = _reference_pairs(frame, "b")
    both = merged.dropna(subset=["score_p", "score_s"])
    p, s = both.score_p.to_numpy(), both.score_s.to_numpy()
    d = s - p
    num = pair["numeric"]
    assert pair["n"] == len(both) and pair["unmatched"] == 1
    assert pair["incomplete"] == len(merged) - len(both)
    assert num["mean_diff"] == pytest.approx(d.mean(), rel=RTOL)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert num["mean_diff_ci"] == pytest.approx([low, high], rel=RTOL)
    assert num["mae"] == pytest.approx(np.abs(d).mean(), rel=RTOL)
    assert num["rmse"] == pytest.approx(np.sqrt(np.mean(d**2)), rel=RTOL)
    assert num["max_abs"] == pytest.approx(np.abs(d).max(), rel=RTOL)
    assert num["pearson"] == pytest.approx(np.corrcoef(p, s)[0, 1], rel=RTOL)
    assert num["spearman"] == pytest.approx(stats.spearmanr(p, s).statistic, rel=RTOL)
    assert num["out_of_tolerance"] == pytest.approx(np.mean(np.abs(d) > 1e-6 + 1e-3 * np.abs(p)))
    dist = pair["distribution"]
    ks = stats.ks_2samp(p, s)
    assert dist["ks_stat"] == pytest.approx(ks.statistic, rel=RTOL)
    assert dist["ks_p"] == pytest.approx(ks.pvalue, rel=RTOL)
    assert dist["psi"] == pytest.approx(_design_psi(p, s), rel=RTOL)
    assert dist["wasserstein"] == pytest.approx(stats.wasserstein_distance(p, s) / np.std(p),
                                                rel=RTOL)
    js = [jensenshannon(a, b, base=2) ** 2 for a, b in zip(both.output_p, both.output_s,
                                                           strict=True)]
    assert pair["js_divergence"] == pytest.approx(np.mean(js), rel=1e-8)


class _Recording:
    """A DuckDB connection that keeps the text of every statement and every fetch kind."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con, self.statements, self.fetches = con, [], []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)

    def execute(self, sql: str, *args: Any) -> Any:
        self.statements.append(" ".join(str(sql).split()))
        result = self.con.execute(sql, *args)
        outer = self

        class Result:
            def __getattr__(self, name: str) -> Any:
                if name.startswith("fetch"):
                    outer.fetches.append(name)
                return getattr(result, name)

        return Result()


def test_duckdb_path_joins_the_calls_once(recorded: tuple[str, pd.DataFrame]) -> None:
    """Issue 19: the DuckDB path joins a shadow's calls to the primary's once (a temporary
    pair table every reduction reads), fetches each pair's two score columns once for
    numpy's exact figures, and leaves no temporary table behind."""
    path, _ = recorded
    con = _Recording(open_source(db=path))
    report = analyze_divergence(con).to_dict()  # type: ignore[arg-type]
    assert _pair(report, "b")["distribution"]["ks_stat"] is not None
    joins = [s for s in con.statements if "LEFT JOIN prim p" in s]
    assert len(joins) == 1, joins
    fetched = [s for s in con.statements if s.startswith("SELECT ps, ss FROM")]
    assert len(fetched) == len(report["pairs"]) - sum(not p["n"] for p in report["pairs"])
    left = con.con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()
    assert left == (0,)


def test_score_columns_past_the_memory_limit_stay_in_the_engine(
    recorded: tuple[str, pd.DataFrame],
) -> None:
    """Issue 19: numpy takes a pair's score columns (and a backend's latencies) only while
    they fit the budget (``memory_limit`` by default); past it the same figures come from
    DuckDB's spilling reductions (no column fetched), equal to numpy's to 1e-9."""
    path, _ = recorded
    in_numpy = analyze_divergence(open_source(db=path)).to_dict()
    con = _Recording(open_source(db=path))
    n = sum(p["n"] for p in in_numpy["pairs"])
    fits = _Recording(open_source(db=path))
    analyze_divergence(fits, numpy_bytes=BYTES_PER_PAIR * n)  # type: ignore[arg-type]
    assert [s for s in fits.statements if s.startswith("SELECT ps, ss FROM")]
    in_engine = analyze_divergence(  # less than one latency: everything stays in DuckDB
        con, numpy_bytes=7).to_dict()  # type: ignore[arg-type]
    assert not [s for s in con.statements if s.startswith("SELECT ps, ss FROM")]
    assert not [s for s in con.statements if s.startswith("SELECT latency_ms FROM")]
    assert any(" OVER " in s for s in con.statements)
    # no holistic aggregate: a 100M-call backend's latencies spill in a sort instead
    assert not [s for s in con.statements
                if "quantile_cont(latency_ms" in s or "quantile_cont(ratio" in s]
    assert [s for s in con.statements if "PARTITION BY route, backend, side ORDER BY v" in s]
    a, b = _pair(in_numpy, "b"), _pair(in_engine, "b")
    for name, value in a["distribution"].items():
        if isinstance(value, float):
            assert b["distribution"][name] == pytest.approx(value, rel=1e-9, abs=1e-300), name
    assert b["numeric"]["spearman"] == pytest.approx(a["numeric"]["spearman"], rel=1e-9)
    assert b["plots"]["score_hist"] == a["plots"]["score_hist"]
    assert b["plots"]["diff_hist"]["counts"] == a["plots"]["diff_hist"]["counts"]
    assert b["latency_ms"]["ratio_median"] == pytest.approx(a["latency_ms"]["ratio_median"],
                                                            rel=1e-12)
    for side in ("primary", "shadow"):
        for name in ("n", "p50", "p95", "p99"):
            assert b["latency_ms"][side][name] == pytest.approx(a["latency_ms"][side][name],
                                                                rel=1e-12)
        assert b["plots"]["latency_cdf"][side]["x"] == pytest.approx(
            a["plots"]["latency_cdf"][side]["x"], rel=1e-12)


def test_class_figures_match_statsmodels(recorded: tuple[str, pd.DataFrame]) -> None:
    path, frame = recorded
    pair = _pair(analyze_divergence(open_source(db=path)).to_dict(), "b")
    both = _reference_pairs(frame, "b").dropna(subset=["label_p", "label_s"])
    agree = int((both.label_p == both.label_s).sum())
    cls = pair["classes"]
    assert cls["n"] == len(both)
    assert cls["agreement"] == pytest.approx(agree / len(both), rel=RTOL)
    assert cls["agreement_ci"] == pytest.approx(
        list(proportion_confint(agree, len(both), method="wilson")), rel=RTOL)
    table = pd.crosstab(both.label_p, both.label_s)
    assert cls["kappa"] == pytest.approx(cohens_kappa(table.to_numpy()).kappa, rel=RTOL)
    labels = cls["confusion"]["labels"]
    matrix = np.array(cls["confusion"]["matrix"])
    assert matrix.sum() == len(both)
    for i, pl in enumerate(labels):
        for j, sl in enumerate(labels):
            assert matrix[i, j] == int(((both.label_p == pl) & (both.label_s == sl)).sum())
    flips = {(f["primary"], f["shadow"]): f["count"] for f in cls["top_flips"]}
    assert all(a != b for a, b in flips)
    assert sum(flips.values()) == len(both) - agree


def test_operations_match_references(recorded: tuple[str, pd.DataFrame]) -> None:
    path, frame = recorded
    pair = _pair(analyze_divergence(open_source(db=path)).to_dict(), "b")
    shad = frame[frame.backend == "b"]
    attempted = shad[shad.status != "DROPPED"]
    lat = attempted.latency_ms.to_numpy()
    q = np.quantile(lat, [0.5, 0.95, 0.99])
    got = pair["latency_ms"]["shadow"]
    assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(q, rel=RTOL)
    merged = _reference_pairs(frame, "b").dropna(subset=["latency_ms_p", "latency_ms_s"])
    ratio = np.median(merged.latency_ms_s / merged.latency_ms_p)
    assert pair["latency_ms"]["ratio_median"] == pytest.approx(ratio, rel=RTOL)
    errors = pair["errors"]["shadow"]
    n_err = int((attempted.status != "OK").sum())
    n_tmo = int((attempted.status == "DEADLINE_EXCEEDED").sum())
    assert errors["n"] == len(attempted) and errors["errors"] == n_err
    assert errors["error_rate_ci"] == pytest.approx(
        list(proportion_confint(n_err, len(attempted), method="wilson")), rel=RTOL)
    assert errors["timeout_rate"] == pytest.approx(n_tmo / len(attempted), rel=RTOL)
    assert errors["dropped"] == int((shad.status == "DROPPED").sum())
    assert pair["errors"]["primary"]["error_rate_ci"][0] == 0.0


def test_replica_gives_noise_floor_and_flags(recorded: tuple[str, pd.DataFrame]) -> None:
    report = analyze_divergence(open_source(db=recorded[0])).to_dict()
    replica, candidate = _pair(report, "r"), _pair(report, "b")
    assert replica["replica"] is True and replica["noise_floor"] is None
    assert candidate["replica"] is False
    floor = candidate["noise_floor"]
    assert floor["backends"] == ["r"]
    assert floor["mae"] == pytest.approx(replica["numeric"]["mae"], rel=RTOL)
    assert floor["psi"] == pytest.approx(replica["distribution"]["psi"], rel=RTOL)
    assert {"mae", "rmse", "psi", "ks_stat"} <= set(candidate["flags"])
    for metric in candidate["flags"]:
        assert floor[metric] is not None
    json.dumps(report, allow_nan=False)


def test_no_pairs_and_no_calls(tmp_path: Path) -> None:
    empty = _make_db(tmp_path / "empty.duckdb", _calls_frame().iloc[0:0])
    report = analyze_divergence(open_source(db=empty))
    assert report.pairs == () and report.message
    frame = _calls_frame(n=20)
    only_shadow = _make_db(tmp_path / "shadow.duckdb", frame[frame.role == "shadow"])
    result = analyze_divergence(open_source(db=only_shadow)).to_dict()
    assert result["message"] and all(p["n"] == 0 and p["message"] for p in result["pairs"])
    assert all(p["unmatched"] > 0 and p["primary"] is None for p in result["pairs"])
    json.dumps(result, allow_nan=False)


def test_constant_scores_one_sided_classes_and_nan(tmp_path: Path) -> None:
    frame = _calls_frame(n=60)
    frame = frame[frame.backend != "r"].copy()
    ok = frame.score.notna()
    frame.loc[ok, "score"] = 0.7
    frame.loc[ok, "label"] = "1"
    frame.loc[ok, "output"] = pd.Series([[0.3, 0.7]] * int(ok.sum()), index=frame.index[ok])
    path = _make_db(tmp_path / "const.duckdb", frame)
    con = duckdb.connect(path)
    con.execute("UPDATE calls SET score = 'nan'::DOUBLE "
                "WHERE backend = 'b' AND request_id = 'q0010'")
    con.close()
    report = analyze_divergence(open_source(db=path)).to_dict()
    pair = _pair(report, "b")
    num = pair["numeric"]
    assert num["pearson"] is None and num["spearman"] is None
    assert "constant" in num["message"] and "NaN" in num["message"]
    assert num["mae"] == 0.0
    assert pair["distribution"]["wasserstein"] is None and pair["distribution"]["message"]
    assert pair["classes"]["kappa"] is None and pair["classes"]["message"]
    assert pair["classes"]["agreement"] == 1.0
    json.dumps(report, allow_nan=False)


def test_scalar_outputs_have_null_classes(tmp_path: Path) -> None:
    frame = _calls_frame(n=50)
    frame["label"] = None
    frame["output"] = None
    path = _make_db(tmp_path / "scalar.duckdb", frame)
    pair = _pair(analyze_divergence(open_source(db=path)).to_dict(), "b")
    assert pair["classes"] is None and pair["js_divergence"] is None
    assert pair["numeric"]["mae"] is not None


def test_route_and_time_filters(recorded: tuple[str, pd.DataFrame]) -> None:
    con = open_source(db=recorded[0])
    assert analyze_divergence(con, route="/other").pairs == ()
    some = analyze_divergence(con, since="2024-03-01T00:01:00", until="2024-03-01T00:02:00")
    assert 0 < _pair(some.to_dict(), "r")["n"] <= 60


def test_segment_by_request_column(tmp_path: Path) -> None:
    frame = _calls_frame(n=40)
    path = _make_db(tmp_path / "seg.duckdb", frame)
    con = duckdb.connect(path)
    con.execute("INSERT INTO requests (request_id, ts, route, variant) SELECT DISTINCT "
                "request_id, ts, route, CASE WHEN right(request_id, 1) IN ('0','2','4','6','8') "
                "THEN 'even' ELSE 'odd' END FROM calls WHERE role = 'primary'")
    con.close()
    report = analyze_divergence(open_source(db=path), segment="variant").to_dict()
    values = {p["segment"]["value"] for p in report["pairs"] if p["segment"]}
    assert {"even", "odd"} <= values


def test_large_sample_path_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=25_000), 2)
    y = np.round(x * 0.8 + rng.normal(0.1, 0.7, size=25_000), 2)
    shift = compare_distributions(x, y)
    ks = stats.ks_2samp(x, y)
    assert shift.ks_stat == pytest.approx(ks.statistic, rel=RTOL)
    assert shift.ks_p == pytest.approx(ks.pvalue, rel=RTOL)
    assert shift.wasserstein == pytest.approx(stats.wasserstein_distance(x, y) / np.std(x),
                                              rel=RTOL)
    assert shift.psi == pytest.approx(_design_psi(x, y), rel=RTOL)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=RTOL)
    u, v = rng.normal(size=30_000), rng.normal(size=30_000)  # no ties
    assert spearman(u, u + v) == pytest.approx(stats.spearmanr(u, u + v).statistic, rel=RTOL)
    assert spearman(u, np.full(u.size, 2.0)) is None


async def test_identical_answers_rate_for_raw_routes(echo, start_sidecar, channel_to,
                                                     tmp_path) -> None:
    """Byte-identical answers are counted for any codec: here a raw route whose shadow
    answers differently for one request in four."""
    import grpc

    from analysis import analyze_divergence, open_source

    class Sometimes(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details):
            async def answer(request: bytes, context) -> bytes:
                return b"other" if int(request.split(b"-")[1]) % 4 == 0 else request

            return grpc.unary_unary_rpc_method_handler(answer)

    shadow = grpc.aio.server()
    shadow.add_generic_rpc_handlers([Sometimes()])
    port = shadow.add_insecure_port("127.0.0.1:0")
    await shadow.start()
    primary = await echo()
    db = tmp_path / "raw.duckdb"
    try:
        sc = await start_sidecar(
            {"p": primary.target, "s": f"127.0.0.1:{port}"},
            [{"match": "*", "primary": "p", "shadows": [{"backend": "s"}]}], db_path=db)
        stub = channel_to(sc.port).unary_unary("/r.S/M")
        for i in range(40):
            await stub(f"req-{i}".encode())
        await sc.aclose()
    finally:
        await shadow.stop(0)
    pair = analyze_divergence(open_source(db=str(db))).to_dict()["pairs"][0]
    assert pair["identical"]["n"] == 40
    assert pair["identical"]["identical"] == 30 and pair["identical"]["rate"] == 0.75
    low, high = pair["identical"]["rate_ci"]
    assert low < 0.75 < high


def test_the_written_out_normal_quantile_is_scipys() -> None:
    """The Wilson intervals' z (written out so reports need not import scipy.stats first)."""
    from analysis import distribution

    assert distribution._Z95 == float(stats.norm.ppf(0.975))


def test_a_join_in_passes_gives_the_same_report(recorded: tuple[str, pd.DataFrame]) -> None:
    """Issue 19: past a few times the memory limit the pair join runs in passes over shares
    of the request ids (DuckDB's own spilling join ran out of memory on 100M primaries at
    600MB); a pair's two calls fall in the same pass, so nothing changes but the memory."""
    path, _ = recorded
    whole = analyze_divergence(open_source(db=path)).to_dict()
    con = _Recording(open_source(db=path))
    split = analyze_divergence(con, passes=3).to_dict()  # type: ignore[arg-type]
    assert len([s for s in con.statements if "LEFT JOIN prim p" in s]) == 3
    assert [s for s in con.statements if s.startswith("INSERT INTO shadowcar_divergence")]
    assert split["pairs"] and split["pairs"][0]["n"] > 0
    assert _close(split, whole)
    assert join_passes(10_000_000, 600e6) == 1
    assert join_passes(100_000_000, 600e6) == 4


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-300)
    return bool(a == b)


class _LabelArrives(_Recording):
    """A live file: right after the report reads the labels, a new pair with a label never
    seen before is recorded (the sidecar writes while a trigger's report runs)."""

    def execute(self, sql: str, *args: Any) -> Any:
        result = super().execute(sql, *args)
        if " ".join(str(sql).split()).startswith("SELECT DISTINCT label"):
            labels = result.fetchall()
            for role in ("primary", "shadow"):
                self.con.execute(
                    "INSERT INTO calls SELECT * REPLACE ('late-1' AS request_id, 'late' AS "
                    f"label) FROM calls WHERE role = '{role}' AND backend <> 'c' LIMIT 1")
            return SimpleNamespace(fetchall=lambda: labels)
        return result


def test_a_label_recorded_during_the_report_is_counted(tmp_path: Path) -> None:
    """The pair join carries labels as an ENUM of the labels read first; a label recorded
    in between is not a conversion error but the strings' path, and it is counted."""
    path = _make_db(tmp_path / "live.duckdb", _calls_frame(), CONFIG)
    con = _LabelArrives(duckdb.connect(path))
    pair = _pair(analyze_divergence(con).to_dict(), "b")  # type: ignore[arg-type]
    assert "late" in pair["classes"]["confusion"]["labels"]
    joins = [s for s in con.statements if "LEFT JOIN prim p" in s]
    assert len(joins) == 2 and "ENUM(" in joins[0] and "ENUM(" not in joins[1]
