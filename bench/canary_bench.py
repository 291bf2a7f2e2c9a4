"""The canary readout at scale: N canary requests recorded in a DuckDB file, read by
``report experiment`` (whose ``canaries`` section is the readout), timed with
``/usr/bin/time -v`` (wall, peak RSS, CPU) at each memory cap asked for.

The file has the recorded schema (``sidecar.sink.schema.migrate``) and is written by DuckDB
SQL, never a Python loop: one route whose canary ran three steps (10%, 50%, 100%), one
request per unit spread evenly over three hours, 30% of the units on the candidate, 2% of
calls failed, exponential latencies, and one outcome (``revenue``) per unit 30 s after its
request. By hand:

    .venv/bin/python bench/canary_bench.py --requests 10000000 --db /tmp/canary10m.duckdb \\
        --memory-limit 600MB 300MB
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from sidecar.sink.schema import migrate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_bench import _measure

ROUTE = "/inference.GRPCInferenceService/ModelInfer"
CONFIG = {"routes": [{"match": ROUTE, "primary": "fraud-v7",
                      "canary": {"stable": "fraud-v7", "candidate": "fraud-v8",
                                 "steps": [10, 50, 100]}}]}


def generate(path: Path, requests: int) -> float:
    """Write ``requests`` canary requests and their outcomes to a new DuckDB file."""
    started = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        con.execute("SET memory_limit = '4GB'")
        migrate(con)
        con.execute("INSERT INTO configs VALUES ('v1', TIMESTAMP '2025-12-31', ?)",
                    [json.dumps(CONFIG)])
        con.executemany(
            "INSERT INTO canary_state (ts, route, state, step_index) VALUES (?, ?, ?, ?)",
            [(f"2026-01-01 0{i}:00:00", ROUTE, "running", i) for i in range(3)])
        span_us = 3 * 3600 * 1_000_000
        con.execute(f"""
            INSERT INTO requests BY NAME
            SELECT 'r' || i AS request_id,
                   TIMESTAMP '2026-01-01' + to_microseconds((i * {span_us} // ?)::BIGINT) AS ts,
                   ? AS route, 'u' || i AS unit_id, 'canary' AS experiment,
                   CASE WHEN random() < 0.3 THEN 'canary' ELSE 'stable' END AS variant,
                   true AS exposed,
                   CASE WHEN random() < 0.02 THEN 'UNAVAILABLE' ELSE 'OK' END AS status,
                   -ln(random()) * 12 AS latency_ms, 'v1' AS config_version
            FROM range(?) t(i)""", [requests, ROUTE, requests])
        con.execute("""
            INSERT INTO outcomes BY NAME
            SELECT 'e' || request_id AS event_id, unit_id, 'revenue' AS metric,
                   100 + random() * 10 AS value, ts + INTERVAL 30 SECOND AS ts
            FROM requests""")
    finally:
        con.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000,
                        help="canary requests, one unit each (default 1M)")
    parser.add_argument("--db", help="reuse or write the recording here (default: temporary)")
    parser.add_argument("--memory-limit", nargs="+", default=["600MB"],
                        help="one run per cap (default 600MB, the CLI's)")
    parser.add_argument("--out", help="keep each run's JSON report in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shadowcar-canary-") as scratch:
        path = Path(args.db) if args.db else Path(scratch) / "canary.duckdb"
        if not path.exists():
            seconds = generate(path, args.requests)
            print(f"wrote {args.requests:,} canary requests to {path} in {seconds:.1f} s")
        results = []
        for cap in args.memory_limit:
            out = (str(Path(args.out) / f"canary-{cap}.json") if args.out else os.devnull)
            argv = [sys.executable, "-m", "analysis", "report", "experiment", "--db",
                    str(path), "--format", "json", "-o", out, "--memory-limit", cap]
            result = {"cap": cap, **_measure(argv)}
            results.append(result)
            print(json.dumps(result))
        print("\n| report | memory limit | wall s | CPU s | peak RSS MB | load | exit |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| experiment + canary readout | {r['cap']} | {r['seconds']} | {r['cpu_s']} | "
                  f"{r['peak_mb']} | {r['load']} | {r['exit']} |")
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
