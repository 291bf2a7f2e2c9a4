"""The caller's latency while a live sidecar runs reports on its own database (issue 15.6).

One sidecar process (admin API on, recording, one shadow at 100 %) before two echo
backends. First a fill phase records traffic; then phases of h2load at a fixed in-flight
level alternate between *quiet* (no report) and *reporting* (a client asks
``GET /v1/reports/{kind}`` over and over, one report at a time, as ``sidecar report --db``
does on a live file). Compared: the caller's p50/p99 and rps in each, the reports finished
and their duration, and the sink's drops. Run by hand:

    .venv/bin/python bench/live_report_bench.py --runs 3 --duration 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_rig import PY, Echo, Sidecar, _free_port, h2load, tree_hash


class Reporter(threading.Thread):
    """Asks for one report after another until stopped; records each duration."""

    def __init__(self, admin: str, kind: str, fmt: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{admin}/v1/reports/{kind}?format={fmt}"
        self.stop_event = threading.Event()
        self.durations: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=600) as resp:
                    resp.read()
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)
                continue
            self.durations.append(time.monotonic() - started)


def _stats(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{admin}/v1/stats", timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _dropped(admin: str) -> int:
    return int(sum(_stats(admin)["sink"]["dropped"].values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="quiet/reporting pairs")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--fill", type=float, default=30.0, help="seconds of traffic first")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--kind", default="divergence",
                        help="report kind asked (divergence, drift, fields, ...)")
    parser.add_argument("--format", default="json", choices=("json", "html", "table"),
                        help="report format asked (html draws its charts: the most Python)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="live-report-bench-"))
    data = work / "payload.bin"
    payload = bytes(range(256))
    data.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    primary, shadow = Echo.start(), Echo.start()
    admin_port = _free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    sc = Sidecar.start("live", work, primary.port,
                       {"port": shadow.port, "timeout_ms": 5000, "max_in_flight": 64},
                       extra={"admin": {"listen": f"127.0.0.1:{admin_port}"}})
    pids = {"sidecar": sc.proc.pid, "echo": primary.proc.pid}
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "tree": tree_hash(), "args": vars(args) | {"json": None},
                               "phases": []}
    try:
        fill = argparse.Namespace(**{**vars(args), "duration": args.fill})
        h2load(sc.port, data, 64, fill, pids, work / "fill.log")
        time.sleep(1.0)
        calls = _stats(admin)["sink"]["written"]["calls"]
        size = sum(p.stat().st_size for p in sc.db.parent.glob(sc.db.name + "*"))
        print(f"filled: {calls} calls recorded; db and WAL {size / 1e6:.1f} MB")
        results["calls_recorded"] = calls
        cli = subprocess.run([str(PY), "-m", "sidecar", "report", args.kind, "--db", str(sc.db),
                              "--format", "json"], capture_output=True, text=True, timeout=600)
        results["cli_exit"] = cli.returncode
        print(f"sidecar report {args.kind} --db (live): exit {cli.returncode}")
        for run in range(args.runs):
            for phase in ("quiet", "reporting"):
                reporter = Reporter(admin, args.kind, args.format) if phase == "reporting" else None
                dropped0 = _dropped(admin)
                if reporter is not None:
                    reporter.start()
                    time.sleep(0.5)  # the first report is under way
                cell = h2load(sc.port, data, args.in_flight, args, pids, work / "h2.log")
                if reporter is not None:
                    reporter.stop_event.set()
                    reporter.join(timeout=600)
                    cell["reports"] = len(reporter.durations)
                    cell["report_s"] = (round(statistics.median(reporter.durations), 3)
                                        if reporter.durations else None)
                    cell["report_failures"] = reporter.failures[:3]
                cell["dropped"] = _dropped(admin) - dropped0
                cell |= {"run": run, "phase": phase}
                results["phases"].append(cell)
                print(f"run {run} {phase:<9} rps {cell['rps']:7.0f} p50 {cell['p50_ms']:6.2f} "
                      f"p99 {cell['p99_ms']:6.2f} ms  sidecar {cell['cpu_cores']['sidecar']:.2f} "
                      f"cores  reports {cell.get('reports', '-')} "
                      f"(median {cell.get('report_s', '-')} s)  dropped {cell['dropped']}")
    finally:
        code = sc.stop()
        primary.stop()
        shadow.stop()
    summary = {}
    for phase in ("quiet", "reporting"):
        cells = [c for c in results["phases"] if c["phase"] == phase]
        summary[phase] = {k: round(statistics.median(c[k] for c in cells), 3)
                          for k in ("rps", "p50_ms", "p99_ms")}
    results["summary"] = summary
    results["sidecar_exit"] = code
    print(json.dumps(summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
