"""Drift report vs Evidently's DataDriftPreset on the same data, side by side in one run.

N recorded requests with one FP64 tensor of F elements (features ``x[0]`` .. ``x[F-1]``;
the second half shifts some of them) are written once as a sidecar DuckDB file (for
``sidecar report drift``) and once as a NumPy array (for Evidently: first half reference,
second half current, as the drift report's default windows). Each tool runs in its own
process under ``/usr/bin/time -v`` (wall, user + system CPU, peak RSS), the two alternating
``--repeat`` times (so a change in the machine's load hits both), and each run's load
average is printed beside it; the table gives the median and the best of each. Evidently
runs from its own throwaway venv (never .venv). Both decide drift per feature by the same
rule (Wasserstein distance over the reference's standard deviation >= 0.1 above 1,000
reference values); the run prints both tools' scores and verdicts to show they did the same
work. ``--floor`` also times a process that only reads the tensors from the file with
DuckDB (Python, DuckDB and pyarrow started, every request's inputs read as Arrow): the
least a report on this file can cost.

    python3 -m venv bench/.venv-evidently
    bench/.venv-evidently/bin/pip install 'evidently==0.7.23' 'pandas<3'  # 0.7.23 predates pandas 3
    .venv/bin/python bench/drift_vs_evidently.py --rows 1000000 --features 10 --repeat 3 --floor
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    found = snapshot.dict()
    scores = {m["config"]["column"]: m["value"] for m in found["metrics"]
              if m["config"].get("type", "").endswith("ValueDrift")}
    print(json.dumps({"bytes": len(json.dumps(found, default=str)), "scores": scores}))


def floor_child(db: str) -> None:
    """Only read every request's tensors from the recorded file (DuckDB to Arrow)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
    rows = sum(b.num_rows for b in con.sql("SELECT ts, route, inputs FROM src.requests")
               .to_arrow_reader(131_072))
    print(json.dumps({"rows": rows}))


def _measure(argv: list[str]) -> dict[str, Any]:
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
            "load": round(load, 1), "stdout": done.stdout.strip()[-2000:],
            "error": "" if done.returncode == 0 else done.stderr.strip()[-300:]}


def _ours_scores(path: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    return {f["feature"]: f["wasserstein"] for f in report["features"]}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["exit"] == 0] or runs
    out: dict[str, Any] = {"runs": len(runs), "failed": len(runs) - len([r for r in runs
                                                                          if r["exit"] == 0])}
    for key in ("seconds", "cpu_s", "peak_mb"):
        values = [float(r[key]) for r in ok]
        out[key] = (round(statistics.median(values), 2), round(min(values), 2))
    out["load"] = (min(r["load"] for r in runs), max(r["load"] for r in runs))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each tool, alternating (default 3)")
    parser.add_argument("--floor", action="store_true",
                        help="also time a process that only reads the tensors with DuckDB")
    parser.add_argument("--evidently-child", metavar="NPY", help=argparse.SUPPRESS)
    parser.add_argument("--floor-child", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evidently_child:
        evidently_child(args.evidently_child)
        return 0
    if args.floor_child:
        floor_child(args.floor_child)
        return 0
    if not _EVIDENTLY.exists():
        print(f"no {_EVIDENTLY}: build it first (see this file's docstring)", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=Path(__file__).parent).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit or '?'}, "
          f"{os.cpu_count()} cores, {platform.python_version()}; command: "
          f"{' '.join(sys.argv)}")
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "evidently": [], "floor": []}
    with tempfile.TemporaryDirectory(prefix="shadowcar-drift-") as tmp:
        start = time.perf_counter()
        db, npy = generate(Path(tmp), args.rows, args.features)
        print(f"generated {args.rows:,} requests x {args.features} features in "
              f"{time.perf_counter() - start:.1f} s")
        out = str(Path(tmp) / "drift.json")
        commands = {
            "ours": [sys.executable, "-m", "analysis", "report", "drift", "--db", str(db),
                     "--format", "json", "-o", out],
            "evidently": [str(_EVIDENTLY), __file__, "--evidently-child", str(npy)],
            "floor": [sys.executable, __file__, "--floor-child", str(db)],
        }
        for i in range(args.repeat):
            # alternate which tool goes first, so neither always follows the other
            order = ["ours", "evidently"] if i % 2 == 0 else ["evidently", "ours"]
            for name in order + (["floor"] if args.floor else []):
                r = _measure(commands[name])
                runs[name].append(r)
                print(f"run {i + 1} {name}: {r['seconds']} s wall, {r['cpu_s']} s CPU, "
                      f"{r['peak_mb']} MB, load {r['load']}, exit {r['exit']} {r['error']}",
                      flush=True)
        ours_scores = _ours_scores(out) if runs["ours"][-1]["exit"] == 0 else {}
    theirs_scores = {}
    if runs["evidently"][-1]["exit"] == 0:
        theirs_scores = json.loads(runs["evidently"][-1]["stdout"].splitlines()[-1])["scores"]
    print("\nWasserstein / sd per feature (ours | Evidently; drifted at >= 0.1):")
    for name in sorted(set(ours_scores) | set(theirs_scores)):
        a, b = ours_scores.get(name), theirs_scores.get(name)
        print(f"  {name}: {a} | {b}" + ("" if a is None or b is None
                                        else f"  verdicts {a >= 0.1} | {b >= 0.1}"))
    table = {name: _summary(r) for name, r in runs.items() if r}
    print(json.dumps(table))
    print("\n| tool | wall s (median / best) | CPU s (median / best) | peak RSS MB "
          "(median / best) | load (1 min) | runs |")
    print("|---|---|---|---|---|---|")
    labels = {"ours": "sidecar report drift (duckdb)", "evidently":
              "Evidently 0.7.23 DataDriftPreset", "floor": "floor: only read the tensors "
              "(DuckDB to Arrow)"}
    for name, t in table.items():
        print(f"| {labels[name]} | {t['seconds'][0]} / {t['seconds'][1]} | {t['cpu_s'][0]} / "
              f"{t['cpu_s'][1]} | {t['peak_mb'][0]} / {t['peak_mb'][1]} | {t['load'][0]}-"
              f"{t['load'][1]} | {t['runs']} ({t['failed']} failed) |")
    ours, theirs = table["ours"], table["evidently"]
    print(f"\nspeed-up, wall: {theirs['seconds'][0] / ours['seconds'][0]:.1f}x median, "
          f"{theirs['seconds'][1] / ours['seconds'][1]:.1f}x best; CPU: "
          f"{theirs['cpu_s'][0] / ours['cpu_s'][0]:.1f}x median (target >= 10x); peak memory "
          f"{ours['peak_mb'][0]} MB vs {theirs['peak_mb'][0]} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
