"""Drift report vs Evidently's DataDriftPreset on the same data, side by side in one run.

N recorded requests with one FP64 tensor of F elements (features ``x[0]`` .. ``x[F-1]``;
the second half shifts some of them) are written once as a sidecar DuckDB file (for
``sidecar report drift``) and once as a NumPy array (for Evidently: first half reference,
second half current, as the drift report's default windows). Each tool runs in its own
process under ``/usr/bin/time -v``; Evidently from its own throwaway venv (never .venv):

    python3 -m venv bench/.venv-evidently
    bench/.venv-evidently/bin/pip install 'evidently==0.7.23' 'pandas<3'  # 0.7.23 predates pandas 3
    .venv/bin/python bench/drift_vs_evidently.py --rows 1000000 --features 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_EVIDENTLY = Path(__file__).resolve().parent / ".venv-evidently" / "bin" / "python"


def generate(directory: Path, rows: int, features: int, seed: int = 19) -> tuple[Path, Path]:
    """The recorded file and the same values as ``values.npy`` (rows x features)."""
    import duckdb

    from sidecar.sink.schema import migrate

    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (rows, features))
    later = np.arange(rows) >= rows // 2
    # Drift in the second half: a 0.1 sd shift, 10% more spread, a 0.5 sd shift.
    values[later, 0] += 0.1
    values[later, 1] *= 1.1
    if features > 2:
        values[later, 2] += 0.5
    npy = directory / "values.npy"
    np.save(npy, values)
    db = directory / "drift.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    con.execute("SET preserve_insertion_order = false")
    source = _parquet(directory, values)
    con.execute(f"CREATE TEMP TABLE v AS SELECT * FROM read_parquet('{source}')")
    cols = ", ".join(f"f{i}" for i in range(features))
    con.execute(f"""
        INSERT INTO requests (request_id, ts, route, method, status, inputs)
        SELECT printf('r-%010d', i), TIMESTAMP '2024-01-01' + to_microseconds(i * 1000),
               '/m.Model/Predict', '/m.Model/Predict', 'OK',
               [{{'name': 'x', 'datatype': 'FP64', 'shape': [{features}], 'data': [{cols}],
                  'text': NULL}}]
        FROM v
    """)
    con.close()
    return db, npy


def _parquet(directory: Path, values: np.ndarray) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = directory / "values.parquet"
    table = pa.table({"i": np.arange(values.shape[0]),
                      **{f"f{j}": values[:, j] for j in range(values.shape[1])}})
    pq.write_table(table, path)
    return path


def evidently_child(npy: str) -> None:
    """Inside the Evidently venv: DataDriftPreset on the halves; prints drifted columns."""
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    values = np.load(npy)
    frame = pd.DataFrame(values, columns=[f"x[{j}]" for j in range(values.shape[1])])
    half = len(frame) // 2
    snapshot = Report([DataDriftPreset()]).run(frame.iloc[half:], frame.iloc[:half])
    found = json.dumps(snapshot.dict(), default=str)
    print(json.dumps({"bytes": len(found)}))


def _measure(argv: list[str]) -> dict[str, float | int | str]:
    load = os.getloadavg()[0]
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True,
                          check=False)

    def field(name: str) -> str:
        found = re.search(rf"{re.escape(name)}: (.+)", done.stderr)
        return found.group(1).strip() if found else "0"

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    return {"exit": done.returncode,
            "seconds": round(sum(float(p) * 60**i for i, p in enumerate(reversed(wall))), 2),
            "peak_mb": round(int(field("Maximum resident set size (kbytes)")) / 1024),
            "cpu_s": round(float(field("User time (seconds)"))
                           + float(field("System time (seconds)")), 2),
            "load": round(load, 1),
            "error": "" if done.returncode == 0 else done.stderr.strip()[-300:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--evidently-child", metavar="NPY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evidently_child:
        evidently_child(args.evidently_child)
        return 0
    if not _EVIDENTLY.exists():
        print(f"no {_EVIDENTLY}: build it first (see this file's docstring)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shadowcar-drift-") as tmp:
        start = time.perf_counter()
        db, npy = generate(Path(tmp), args.rows, args.features)
        print(f"generated {args.rows:,} requests x {args.features} features in "
              f"{time.perf_counter() - start:.1f} s")
        ours = _measure([sys.executable, "-m", "analysis", "report", "drift", "--db", str(db),
                         "--format", "json", "-o", os.devnull])
        theirs = _measure([str(_EVIDENTLY), __file__, "--evidently-child", str(npy)])
    speedup = theirs["seconds"] / ours["seconds"] if ours["seconds"] else float("nan")
    print(json.dumps({"shadowcar": ours, "evidently": theirs}))
    print("\n| tool | wall s | CPU s | peak RSS MB | load | exit |")
    print("|---|---|---|---|---|---|")
    for name, r in (("sidecar report drift", ours), ("Evidently 0.7.23 DataDriftPreset", theirs)):
        print(f"| {name} | {r['seconds']} | {r['cpu_s']} | {r['peak_mb']} | {r['load']} | "
              f"{r['exit']} |")
    print(f"\nspeed-up {speedup:.1f}x (target >= 10x), memory "
          f"{ours['peak_mb']} MB vs {theirs['peak_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
