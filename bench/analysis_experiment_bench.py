"""Time analyze_experiments on a synthetic analyst table (units x metrics, long format).

Data are generated inside DuckDB with random(), never in Python. Run by hand:
    .venv/bin/python bench/analysis_experiment_bench.py --units 10000000
"""

from __future__ import annotations

import argparse
import json
import time

import duckdb

from analysis.experiment import analyze_experiments

_GENERATE = """
CREATE OR REPLACE TABLE experiment_input AS
WITH units AS (
    SELECT i AS unit_id,
           CASE WHEN hash(i) % 100 < 50 THEN 'control'
                WHEN hash(i) % 100 < 75 THEN 'treat_a' ELSE 'treat_b' END AS variant,
           random() AS u1, random() AS u2
    FROM range(?) t(i)
)
SELECT unit_id, variant, m.metric,
       -- roughly normal (sum of uniforms), with a 2% lift for treat_a on revenue
       CASE m.metric
           WHEN 'revenue' THEN 10 * (u1 + u2 + random()) *
                CASE WHEN variant = 'treat_a' THEN 1.02 ELSE 1.0 END
           WHEN 'clicks' THEN CAST(random() < 0.1 + 0.01 * (variant = 'treat_b')::INT AS DOUBLE)
           ELSE 5 * u1 + random()
       END AS value,
       5 * u1 + random() AS pre_value
FROM units CROSS JOIN (VALUES ('revenue'), ('clicks'), ('sessions')) m(metric)
"""


_WEIGHTS = {"control": 2.0, "treat_a": 1.0, "treat_b": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=10_000_000)
    parser.add_argument("--db", default=":memory:", help="DuckDB file (default in memory)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    con = duckdb.connect(args.db)
    con.execute(f"SET threads = {int(args.threads)}")
    t0 = time.perf_counter()
    con.execute(_GENERATE, [args.units])
    rows = con.execute("SELECT count(*) FROM experiment_input").fetchone()
    print(
        f"generated {rows[0] if rows else 0:,} rows ({args.units:,} units x 3 metrics) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    timings: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    for label, kwargs in (
        ("welch", {"cuped": False}),
        ("cuped", {"cuped": True}),
        ("cuped+ratio", {"cuped": True, "ratios": {"rev_per_session": ("revenue", "sessions")}}),
        ("sequential", {"cuped": False, "sequential": True}),
        ("winsorize", {"cuped": False, "winsorize": 0.99}),
    ):
        best, cpu = float("inf"), float("inf")
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            report = analyze_experiments(
                con,
                source="table",
                weights=_WEIGHTS,
                **kwargs,  # type: ignore[arg-type]
            )
            best = min(best, time.perf_counter() - t0)
            cpu = min(cpu, time.process_time() - c0)
        timings[label] = round(best, 2)
        cpu_seconds[label] = round(cpu, 2)
        exp = report.experiments[0]
        print(f"{label:12s} {best:6.2f} s  srm p={exp.srm.p_value:.3g}  rows={len(exp.results)}")
    # cpu / threads is what the wall time would be on idle cores; a shared box inflates wall.
    print(json.dumps({"units": args.units, "threads": args.threads, "wall_s": timings,
                      "cpu_s": cpu_seconds}))


if __name__ == "__main__":
    main()
