"""`sidecar demo` (what `make demo` runs), as a user runs it: exit 0, the summary, the files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar.demo.runner import summarize_recording


def test_demo_runs_records_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--requests", "200", "--concurrency", "8",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Recorded 200 requests" in done.stdout
    for name in ("shadowcar.duckdb", "divergence.html", "quality.html"):
        assert (out / name).stat().st_size > 0, name
    summary = summarize_recording(out / "shadowcar.duckdb")
    assert summary["requests"] == 200
    lanes = {s["backend"]: s for s in summary["shadows"]}
    # fraud-v8 mirrors every request; the flaky shadow half of them (by request id), and it
    # fails or times out on some: recorded, never surfaced (every caller got an answer).
    assert lanes["fraud-v8"]["sampled"] == 200
    assert 60 < lanes["fraud-v9-flaky"]["sampled"] < 140
    assert lanes["fraud-v9-flaky"]["errored"] + lanes["fraud-v9-flaky"]["dropped"] > 0
    for lane in lanes.values():  # Issue 15.9: the counters add up (docs/counters.md)
        assert lane["sampled"] == lane["sent"] + lane["dropped"], lane
        assert lane["sent"] == lane["answered"] + lane["errored"], lane
        assert sum(lane["errors"].values()) == lane["errored"], lane
    assert "200 answered, 0 failed" in done.stdout
    assert "sampled = sent + dropped" in done.stdout
    agreement = {a["shadow"]: a for a in summary["agreement"]}
    assert 0.5 < agreement["fraud-v8"]["agreement"] <= 1.0
