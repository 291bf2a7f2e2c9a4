"""The proxy benchmark's rig: echo and sidecar processes, h2load runs, recorded statuses.

Used by bench/proxy_bench.py; every process it starts is a child the caller stops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY = Path(sys.executable)
SIDECAR = PY.parent / "sidecar"
METHOD = "/bench.Echo/Call"
TICK = os.sysconf("SC_CLK_TCK")


# -- processes -------------------------------------------------------------------------
def tree_hash() -> str:
    """sha256 prefix of every .py under sidecar/: the exact code measured, committed or not."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "sidecar").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a sidecar's recorder child counts as the sidecar)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (all threads)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` plus its children's, in MB."""
    total = 0
    for p in _tree(pid):
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024 if total else float("nan")


#: Sidecar processes per scenario (env BENCH_WORKERS; `serve --workers`).
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))


@dataclass
class Echo:
    """An echo backend process (bench/echo_backend.py)."""

    proc: subprocess.Popen[str]
    port: int
    counters: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, delay_ms: float = 0.0) -> Echo:
        proc = subprocess.Popen(
            [str(PY), str(BENCH / "echo_backend.py"), "--delay-ms", str(delay_ms)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the child prints READY or dies (EOF)
        if not line.startswith("READY "):
            proc.kill()
            raise RuntimeError(f"echo backend did not start: {line!r}")
        return cls(proc, int(line.split()[1]))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        self.counters = json.loads(lines[-1]) if lines else {}


@dataclass
class Bare:
    """``bench/bare_proxy.py``: the minimal raw-bytes proxy the sidecar is compared with."""

    name: str
    proc: subprocess.Popen[str]
    port: int

    @classmethod
    def start(cls, primary: int, shadow: int | None = None, contract: str | None = None) -> Bare:
        copy = ["--shadow", f"127.0.0.1:{shadow}"] if shadow is not None else []
        if contract is not None:  # a DuckDB file, or "-": the contract without its rows
            copy += ["--contract", contract]
        proc = subprocess.Popen(
            [str(PY), str(BENCH / "bare_proxy.py"), "--target", f"127.0.0.1:{primary}", *copy],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            raise RuntimeError(f"bare proxy did not start: {line!r}")
        name = ("bare_ids" if contract == "-" else "bare_contract" if contract
                else "bare" if shadow is None else "bare_shadow")
        return cls(name, proc, int(line.split()[1]))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=20)
        return self.proc.returncode


@dataclass
class Sidecar:
    """``sidecar serve`` on a temp YAML config, recording to a temp DuckDB file."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    db: Path
    log: Path

    @classmethod
    def start(
        cls,
        name: str,
        workdir: Path,
        primary: int,
        shadow: dict[str, Any] | None,
        variant: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Sidecar:
        port = _free_port()
        db, log, cfg = (workdir / f"{name}.{ext}" for ext in ("duckdb", "log", "yaml"))
        backends = [{"name": "primary", "version": "1", "target": f"127.0.0.1:{primary}"}]
        route: dict[str, Any] = {"match": "*", "primary": "primary", "timeout_ms": 5000}
        if shadow is not None:
            backends.append(
                {"name": "shadow", "version": "1", "target": f"127.0.0.1:{shadow['port']}"}
            )
            route["shadows"] = [
                {
                    "backend": "shadow",
                    "sample_percent": 100,
                    "timeout_ms": shadow["timeout_ms"],
                    "max_in_flight": shadow["max_in_flight"],
                }
            ]
        config = {
            "listen": f"127.0.0.1:{port}",
            "admin": {"listen": None},
            # the product's defaults (flush_interval_ms 1000); BENCH_STORAGE changes them
            "storage": {"path": str(db),
                        **json.loads(os.environ.get("BENCH_STORAGE", "{}")),
                        **(extra or {}).get("storage", {})},
            "backends": backends,
            "routes": [route],
            **{k: v for k, v in (extra or {}).items() if k != "storage"},
        }
        cfg.write_text(json.dumps(config, indent=1))  # JSON is YAML
        launcher = [str(SIDECAR)]
        if variant:
            launcher = [str(PY), str(BENCH / "sidecar_variant.py"), "--variant", variant]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*launcher, "--log-level", "WARNING", "serve", "--config", str(cfg),
                 "--workers", str(WORKERS)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        sidecar = cls(name, proc, port, db, log)
        deadline = time.monotonic() + 30
        while not _probe(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sidecar {name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        return sidecar

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=90)


# -- gRPC client checks (not the load generator) ---------------------------------------------
def _probe(port: int) -> bool:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            ch.unary_unary(METHOD)(b"probe", timeout=1)
        except grpc.RpcError:
            return False
    return True


def sample_pass(port: int, payload: bytes, calls: int) -> dict[str, int]:
    """Real gRPC calls with the bench payload: every one must be OK and echo the bytes."""
    import grpc

    result = {"calls": calls, "ok": 0, "bad_status": 0, "bad_bytes": 0}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.unary_unary(METHOD)
        for start in range(0, calls, 16):
            futures = [stub.future(payload, timeout=10) for _ in range(min(16, calls - start))]
            for fut in futures:
                try:
                    body = fut.result()
                except grpc.RpcError:
                    result["bad_status"] += 1
                    continue
                result["ok" if body == payload else "bad_bytes"] += 1
    return result


# -- load generator ----------------------------------------------------------------------
def _h2time(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"  # h2load rejects fractional seconds


def h2load(
    port: int,
    data: Path,
    in_flight: int,
    args: argparse.Namespace,
    pids: dict[str, int],
    logfile: Path,
) -> dict[str, Any]:
    """One h2load run; latencies from its per-request log, CPU of every process involved."""
    cmd = [
        "h2load",
        "-t1",
        f"-c{args.connections}",
        f"-m{max(1, in_flight // args.connections)}",
        "-D",
        _h2time(args.duration),
        "--warm-up-time",
        _h2time(args.warmup),
        "-d",
        str(data),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--log-file",
        str(logfile),
        f"http://127.0.0.1:{port}{METHOD}",
    ]
    cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0, w0 = time.monotonic(), time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    wall, w1 = time.monotonic() - t0, time.time()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {k: (_cpu_s(p) - cpu0[k]) / wall for k, p in pids.items()}
    cpu["h2load"] = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed: {out.stderr}\n{out.stdout}")
    text = out.stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("requests:"))
    nums = [int(tok) for tok in line.replace(",", " ").split() if tok.isdigit()]
    _total, _started, done, succeeded, failed, errored, timeout = nums[:7]
    codes = next(ln for ln in text.splitlines() if ln.startswith("status codes:"))
    ok_2xx = int(codes.split()[2])
    rps = float(next(ln for ln in text.splitlines() if ln.startswith("finished in")).split()[3])
    lat_us = sorted(
        int(cols[2])
        for cols in (ln.split("\t") for ln in logfile.read_text().splitlines())
        if len(cols) == 3 and cols[1] == "200"
    )
    logfile.unlink()
    if not lat_us:
        raise RuntimeError(f"h2load logged no successful request:\n{text}")

    def pct(q: float) -> float:
        return lat_us[min(len(lat_us) - 1, int(q * len(lat_us)))] / 1000

    return {
        "in_flight": in_flight,
        "rps": rps,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "done": done,
        "succeeded": succeeded,
        "failed": failed + errored + timeout,
        "http_2xx": ok_2xx,
        "load1": load,
        "cpu_cores": {k: round(v, 3) for k, v in cpu.items()},
        "window": [w0, w1],  # every record of this run has its ts inside
    }


def rss_soak(
    port: int, pid: int, data: Path, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """h2load for ``soak_s`` seconds while the sidecar's VmRSS is sampled every second."""
    samples: list[float] = [rss_mb(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    soak_args = argparse.Namespace(**{**vars(args), "duration": args.soak_s, "warmup": 0})
    sampler.start()
    try:
        run = h2load(
            port, data, args.soak_in_flight, soak_args, {"sidecar": pid}, workdir / "soak.tsv"
        )
    finally:
        stop.set()
        sampler.join()
    half = samples[len(samples) // 2 :]
    return {
        "in_flight": args.soak_in_flight,
        "seconds": args.soak_s,
        "rps": run["rps"],
        "p99_ms": run["p99_ms"],
        "window": run["window"],
        "rss_mb": {
            "start": round(samples[0], 1),
            "peak": round(max(samples), 1),
            "end": round(samples[-1], 1),
            "second_half_growth": round(half[-1] - half[0], 1),
        },
        "rss_series_mb": [round(s, 1) for s in samples],
    }


def profile(sc: Sidecar, data: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """py-spy (sampling, non-blocking) over an h2load run at 16 in flight: a flame graph of
    every thread, and folded stacks of the GIL holder for reading in a terminal."""
    out_dir = Path(args.json).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(PY.parent / "py-spy")
    # The flame graph samples every thread; the folded stacks only the thread holding the GIL,
    # which shows what the one-core Python part of the sidecar spends itself on.
    views = {
        "flamegraph": ("flamegraph", str(out_dir / "profile.svg"), []),
        "gil_folded": ("raw", str(out_dir / "profile_gil.folded"), ["--gil"]),
        "all_folded": ("raw", str(out_dir / "profile_all.folded"), ["--native", "--threads"]),
    }
    procs = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(sc.proc.pid),
                "--duration",
                str(round(args.profile)),
                "--rate",
                "100",
                "--nonblocking",
                *extra,
                "--format",
                fmt,
                "-o",
                path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, path, extra in views.values()
    ]
    time.sleep(0.5)  # let py-spy attach before the load starts
    run_args = argparse.Namespace(**{**vars(args), "duration": args.profile, "warmup": 0})
    run = h2load(sc.port, data, 16, run_args, {"sidecar": sc.proc.pid}, workdir / "prof.tsv")
    for p in procs:
        p.wait(timeout=60)
    return {"files": {k: v[1] for k, v in views.items()}, "rps_while_profiling": run["rps"]}


# -- recorded statuses --------------------------------------------------------------------
def recorded(db: Path, windows: list[list[float]]) -> list[dict[str, Any]]:
    """Per window: status counts of requests, and of calls by role, from the sidecar's DuckDB."""
    import duckdb

    out = []
    if WORKERS > 1:  # the workers' segments, seen as one
        from analysis.load import open_source

        con = open_source(db=str(db.with_name(f"{db.stem}.w*{db.suffix}")))
    else:
        con = duckdb.connect(str(db), read_only=True)
    try:
        for lo, hi in windows:
            span = [int(lo * 1e6), int(hi * 1e6)]
            req = dict(
                con.execute(
                    "SELECT status, count(*) FROM requests WHERE epoch_us(ts) BETWEEN ? AND ? "
                    "GROUP BY status",
                    span,
                ).fetchall()
            )
            calls = con.execute(
                "SELECT role || ':' || status, count(*) FROM calls "
                "WHERE epoch_us(ts) BETWEEN ? AND ? GROUP BY 1",
                span,
            ).fetchall()
            out.append({"requests": req, "calls": dict(calls)})
    finally:
        con.close()
    return out
