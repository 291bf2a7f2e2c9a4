"""Issue 19.1/19.2: every report's figures are the same through DuckDB and through Spark.

One fleet export (the showcase file exported by the sidecar's own exporter) is analysed
with ``--engine duckdb`` and ``--engine spark`` (Spark in local mode, one session for the
module); every number of the JSON reports must agree to 1e-9 relative. Where a report or
part of one runs on DuckDB only, ``--engine spark`` must refuse it (exit 2) rather than
give other numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.engine import duckdb_engine, spark_engine, spark_memory
from analysis.experiment import analyze_experiments
from analysis.load import AnalysisSourceError, open_source
from tests.analysis.conftest import export_fleet
from tests.analysis.report_data import build_showcase

RTOL = 1e-9
pytestmark = [
    pytest.mark.slow,
    # py4j (Spark's bridge) drops its pooled loopback sockets to the garbage collector
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The showcase recorded file exported as the fleet layout by the real exporter."""
    root = tmp_path_factory.mktemp("fleet")
    return export_fleet(build_showcase(root / "showcase.duckdb"), root)


def assert_same(a: Any, b: Any, where: str = "$") -> None:
    """Equal JSON values; numbers to RTOL relative (1e-12 absolute near zero)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        assert a == b, f"{where}: {a!r} != {b!r}"
    elif isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), where
        else:
            assert a == pytest.approx(b, rel=RTOL, abs=1e-12), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _strip(report: dict[str, Any]) -> dict[str, Any]:
    """The figures: the engine named in params is the one difference allowed."""
    report = json.loads(json.dumps(report))
    report.get("params", {}).pop("engine", None)
    report.get("settings", {}).pop("engine", None)
    return report


def test_experiment_recorded_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1: the experiment's sufficient statistics, per variant and metric, come from
    one Ibis expression; DuckDB's report and Spark's agree to 1e-9 (CUPED, window,
    winsorizing, a ratio, sequential)."""
    con = open_source(parquet=str(fleet))
    engines = [None, duckdb_engine(con), spark_engine(spark, parquet=str(fleet))]
    for options in ({}, {"cuped": True, "window": "2d", "ratios": {"r": ("revenue", "revenue")}},
                    {"winsorize": 0.95, "sequential": True, "all_versions": True}):
        reports = [analyze_experiments(con if e is None else None, engine=e, canaries=False,
                                       **options).to_dict() for e in engines]  # type: ignore[arg-type]
        assert reports[0]["experiments"] and reports[0]["experiments"][0]["results"]
        for other in reports[1:]:
            assert_same(_strip(reports[0]), _strip(other))


def test_experiment_table_equal_on_both_engines(tmp_path: Path, spark: Any) -> None:
    """Issue 19.1: an analyst table through Spark gives DuckDB's figures (non-finite rows,
    a unit in two variants, CUPED on pre_value, a 1e7 + N(0,1) metric)."""
    rng = np.random.default_rng(5)
    n = 3000
    frame = pd.DataFrame({
        "unit_id": [f"u{i}" for i in range(n)] * 2,
        "variant": np.where(np.arange(2 * n) % 2 == 0, "a", "b"),
        "metric": ["big"] * n + ["clicks"] * n,
        "value": np.concatenate([1e7 + rng.normal(size=n), rng.integers(0, 2, n)]),
        "pre_value": np.concatenate([1e7 + rng.normal(size=n), rng.integers(0, 2, n)]),
    })
    frame.loc[7, "value"] = np.nan
    frame.loc[n + 8, "variant"] = "b" if frame.loc[n + 8, "variant"] == "a" else "a"
    path = tmp_path / "units.parquet"
    frame.to_parquet(path)
    con = open_source(table=str(path), kind="experiment")
    theirs_engine = spark_engine(spark, table=str(path), kind="experiment")
    for options in ({}, {"winsorize": 0.9}):  # Spark's bounds: order statistics, not percentile
        ours = analyze_experiments(con, source="table", control="a", **options).to_dict()
        theirs = analyze_experiments(None, source="table", control="a", engine=theirs_engine,
                                     **options).to_dict()  # type: ignore[arg-type]
        assert_same(_strip(ours), _strip(theirs))


def test_cli_spark_refuses_a_duckdb_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19.2: --engine spark with --db says to use the export or the DuckDB engine."""
    db = build_showcase(tmp_path / "s.duckdb")
    code = main(["report", "experiment", "--db", str(db), "--engine", "spark"])
    assert code == 2
    assert "--engine duckdb" in capsys.readouterr().err


def test_memory_limit_reads_as_a_jvm_size() -> None:
    """Issue 19.5: --memory-limit means the same on Spark (the driver's heap)."""
    assert spark_memory("1GB") == "1024m"
    assert spark_memory("1500MB") == "1500m"
    assert spark_memory(None) is None
    with pytest.raises(AnalysisSourceError):
        spark_memory("lots")


def test_cli_spark_report_equals_duckdb(tmp_path: Path, spark: Any) -> None:
    """Issue 19.2: `report experiment --engine spark` through the CLI writes the JSON that
    `--engine duckdb` writes, figure for figure."""
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"unit_id": [f"u{i}" for i in range(400)],
                          "variant": np.where(np.arange(400) % 3 == 0, "a", "b"),
                          "metric": "m", "value": rng.normal(5.0, 2.0, 400)})
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    outs = []
    for engine in ("duckdb", "spark"):
        out = tmp_path / f"{engine}.json"
        assert main(["report", "experiment", "--input", str(path), "--engine", engine,
                     "--control", "a", "--format", "json", "-o", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["experiments"][0]["results"]
    assert_same(_strip(outs[0]), _strip(outs[1]))


def _score_pairs() -> pd.DataFrame:
    """Paired scores in three groups: heavy ties (1 decimal), many values past scipy's exact
    KS limit, a small group, a constant primary and a near-constant difference."""
    rng = np.random.default_rng(3)
    frames = []
    for key, n, digits in (("ties", 500, 1), ("big", 12000, 6), ("small", 37, 9)):
        ps = np.round(rng.normal(size=n), digits)
        frames.append(pd.DataFrame({"k": key, "ps": ps,
                                    "ss": ps + np.round(rng.normal(scale=0.3, size=n), 2)}))
    ss = 1e7 + rng.normal(size=50)
    frames.append(pd.DataFrame({"k": "flat", "ps": 2.0, "ss": ss}))
    frames.append(pd.DataFrame({"k": "replica", "ps": ss, "ss": ss + 1e-12}))
    return pd.concat(frames, ignore_index=True)


def test_score_figures_exact_on_both_engines(spark: Any) -> None:
    """Issue 19.1: KS, Wasserstein, Spearman, PSI and the plotted histograms of paired scores
    computed in the engine (window counts, ranks, numpy's quantile written out) equal numpy's
    and scipy's figures on DuckDB and on Spark: 1e-9 relative, counts and edges exactly."""
    import ibis

    from analysis.distribution import compare_distributions, spearman
    from analysis.distribution_engine import score_figures, shift_of
    from analysis.engine import Engine
    from tests.analysis.test_divergence import numpy_plots as _plots

    frame = _score_pairs()
    con = duckdb.connect()
    con.register("score_frame", frame)
    con.execute("CREATE TABLE score_pairs AS SELECT * FROM score_frame")
    spark.createDataFrame(frame).createOrReplaceTempView("score_pairs")
    backend = ibis.pyspark.connect(spark)
    found = [
        score_figures(duckdb_engine(con), ibis.table(
            {"k": "string", "ps": "float64", "ss": "float64"}, name="score_pairs"), ["k"]),
        score_figures(Engine("spark", backend, None, {}, spark), backend.table("score_pairs"),
                      ["k"]),
    ]
    for key, sub in frame.groupby("k"):
        p, s = sub.ps.to_numpy(), sub.ss.to_numpy()
        ref = compare_distributions(p, s)
        want = {"shift": {k: getattr(ref, k) for k in ("psi", "ks_stat", "ks_p",
                                                       "wasserstein", "message")},
                "spearman": spearman(p, s), "plots": _plots(p, s)}
        for figures in found:
            got = shift_of(figures[(key,)])
            assert_same(want, {"shift": {k: getattr(got, k) for k in want["shift"]},
                               "spearman": figures[(key,)]["spearman"],
                               "plots": figures[(key,)]["plots"]}, f"$[{key}]")
            assert figures[(key,)]["plots"] == want["plots"], key  # edges and counts exact


def test_divergence_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1: the divergence report's row work (pair join, moments, labels, latency,
    errors, replicas, identical answers, exact score distributions) through Spark gives
    DuckDB's report to 1e-9: whole, by segment, one route, all versions."""
    from analysis.divergence import analyze_divergence
    from analysis.divergence_engine import analyze_divergence_engine

    con = open_source(parquet=str(fleet))
    engines = [duckdb_engine(con), spark_engine(spark, parquet=str(fleet))]
    for options in ({}, {"segment": "experiment", "atol": 0.01, "rtol": 0.0},
                    {"segment": "status", "route": "/fraud.Model/Predict", "all_versions": True}):
        ours = analyze_divergence(con, **options).to_dict()  # type: ignore[arg-type]
        assert ours["pairs"] and ours["pairs"][0]["distribution"]
        for engine in engines:
            theirs = analyze_divergence_engine(engine, **options).to_dict()  # type: ignore[arg-type]
            assert_same(ours, theirs)


def test_spark_divergence_runs_no_exact_percentile(fleet: Path, spark: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: Spark's exact ``percentile`` holds a group's every value in one task's heap
    (a 10M-pair report ran a 1.5 GB JVM out of memory); the latency quantiles and the median
    latency ratio are order statistics (``row_number``) with numpy's interpolation instead,
    and still equal DuckDB's figures (test_divergence_equal_on_both_engines)."""
    from analysis.divergence_engine import analyze_divergence_engine
    from analysis.engine import Engine

    seen: list[str] = []
    rows = Engine._spark_rows

    def spy(self: Engine, expr: Any) -> list[dict[str, Any]]:
        assert self.backend is not None
        seen.append(str(self.backend.compile(expr)).lower())
        return rows(self, expr)

    monkeypatch.setattr(Engine, "_spark_rows", spy)
    report = analyze_divergence_engine(spark_engine(spark, parquet=str(fleet))).to_dict()
    assert report["pairs"][0]["latency_ms"]["ratio_median"] is not None
    assert seen and not [sql for sql in seen if "percentile" in sql]


def test_cli_divergence_spark_equals_duckdb(fleet: Path, tmp_path: Path, spark: Any) -> None:
    """Issue 19.2: `report divergence --engine spark` over the fleet export writes the JSON
    of `--engine duckdb`, figure for figure."""
    outs = []
    for engine in ("duckdb", "spark"):
        out = tmp_path / f"{engine}.json"
        assert main(["report", "divergence", "--parquet", str(fleet), "--engine", engine,
                     "--format", "json", "-o", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["pairs"]
    assert_same(_strip(outs[0]), _strip(outs[1]))


def test_drift_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1: the drift report's row work (tensors unnested in the engine, counts per
    window, exact KS/Wasserstein/PSI, Sturges histograms for Jensen-Shannon) through Spark
    gives DuckDB's report to 1e-9, with declared ranges and explicit windows too."""
    from analysis.drift import analyze_drift
    from analysis.drift_engine import analyze_drift_engine

    con = open_source(parquet=str(fleet))
    engines = [duckdb_engine(con), spark_engine(spark, parquet=str(fleet))]
    for options in ({}, {"ranges": {"amount": (0.0, 50.0)}, "method": "psi",
                         "reference": (None, "2026-01-05T06:00"),
                         "current": ("2026-01-05T06:00", None)}):
        ours = analyze_drift(con, **options).to_dict()  # type: ignore[arg-type]
        assert ours["features"] and ours["features"][0]["ks_stat"] is not None
        for engine in engines:
            theirs = analyze_drift_engine(engine, **options).to_dict()  # type: ignore[arg-type]
            assert_same(ours, theirs)


def test_drift_categories_and_tensors_equal_on_both_engines(tmp_path: Path, spark: Any) -> None:
    """Issue 19.1: categorical inputs (an unseen category), a 3-wide tensor and NaN values
    give the same drift report on Spark as on DuckDB, through the CLI."""
    root = tmp_path / "fleet" / "table=requests" / "date=2026-01-01"
    root.mkdir(parents=True)
    duckdb.sql(f"""
        COPY (SELECT 'q' || i AS request_id, TIMESTAMP '2026-01-01' + to_seconds(i) AS ts,
                     '/m' AS route,
                     [{{'name': 'vec', 'datatype': 'FP64', 'shape': [3],
                        'data': [sin(i), CASE WHEN i % 97 = 0 THEN 'nan'::DOUBLE ELSE i % 7 END,
                                 round(i / 1000, 1)],
                        'text': NULL::VARCHAR[]}},
                      {{'name': 'kind', 'datatype': 'BYTES', 'shape': [1], 'data': NULL::DOUBLE[],
                        'text': [CASE WHEN i > 1500 AND i % 5 = 0 THEN 'new'
                                      ELSE ['a', 'b', 'c'][1 + i % 3] END]}}] AS inputs
              FROM range(2000) t(i))
        TO '{root / "part.parquet"}' (FORMAT parquet)""")
    outs = []
    for engine in ("duckdb", "spark"):
        out = tmp_path / f"{engine}.json"
        assert main(["report", "drift", "--parquet", str(tmp_path / "fleet"), "--engine", engine,
                     "--format", "json", "-o", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    kinds = {f["feature"]: f["kind"] for f in outs[0]["features"]}
    assert kinds == {"vec[0]": "numeric", "vec[1]": "numeric", "vec[2]": "numeric",
                     "kind": "categorical"}
    cat = next(f for f in outs[0]["features"] if f["feature"] == "kind")
    assert cat["unseen_categories"] == ["new"] and cat["chi2"] is not None
    assert_same(_strip(outs[0]), _strip(outs[1]))
