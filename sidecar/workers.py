"""``sidecar serve --workers N``: N processes share the listening port (SO_REUSEPORT).

Each worker records into its own segment (``shadowcar.w0.duckdb``, ``shadowcar.w1.duckdb``,
...; analysis reads them as one with ``--db 'shadowcar.w*.duckdb'``). Worker 0 serves the
admin API on the configured port and answers for all workers (stats summed, metrics with a
``worker`` label); worker i > 0 serves its own on the next port (``port + i``), loopback.
Canaries and triggers decide from one process's data, so they need ``--workers 1``.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sidecar.config import LoadedConfig
from sidecar.errors import ConfigError

__all__ = ["admin_port_of", "check_workers", "for_worker", "run_supervisor", "segment_path"]


def segment_path(path: str, index: int) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}.w{index}{p.suffix or '.duckdb'}"))


def admin_port_of(listen: str, index: int) -> str:
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + index}"


def check_workers(loaded: LoadedConfig, workers: int) -> None:
    """Raise ConfigError when this config cannot run as ``workers`` processes."""
    cfg = loaded.config
    problems: list[tuple[str, str]] = []
    if workers < 1 or workers > 64:
        problems.append(("--workers", "must be between 1 and 64"))
    if workers > 1:
        if cfg.listen.endswith(":0"):
            problems.append(("listen", "a fixed port is needed for --workers > 1"))
        for r, route in enumerate(cfg.routes):
            if route.canary is not None:
                problems.append((f"routes[{r}].canary",
                                 "a canary decides from one process's data: use --workers 1"))
        if cfg.triggers:
            problems.append(("triggers", "triggers run in one process: use --workers 1"))
        if cfg.admin.listen is not None and cfg.admin.listen.endswith(":0"):
            problems.append(("admin.listen", "a fixed port is needed for --workers > 1"))
    if problems:
        raise ConfigError(problems, loaded.source)


def for_worker(loaded: LoadedConfig, index: int, workers: int) -> LoadedConfig:
    """The config worker ``index`` runs: its own segment file and admin port."""
    if workers <= 1:
        return loaded
    cfg = loaded.config
    storage = cfg.storage.model_copy(update={"path": segment_path(cfg.storage.path, index)})
    admin = cfg.admin
    if admin.listen is not None and index > 0:
        host, _, first = admin.listen.rpartition(":")
        port = int(first) + index  # as admin_port_of says
        # Other workers' admin APIs stay on loopback: worker 0 speaks for them.
        local = "127.0.0.1" if host not in ("127.0.0.1", "[::1]", "localhost") else host
        admin = admin.model_copy(update={"listen": f"{local}:{port}"})
    config = cfg.model_copy(update={"storage": storage, "admin": admin})
    return dataclasses.replace(loaded, config=config)


def run_supervisor(config_path: str, workers: int, argv_extra: list[str]) -> int:
    """Start the workers, forward signals to them, and wait. A worker that dies stops all."""
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(workers):
        procs.append(subprocess.Popen([
            sys.executable, "-m", "sidecar", *argv_extra, "serve", "--config", config_path,
            "--workers", str(workers), "--worker-index", str(i),
        ]))

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = 0
    try:
        while any(p.poll() is None for p in procs):
            for p in procs:
                rc = p.poll()
                if rc not in (None, 0) and code == 0:
                    code = 1
                    forward(signal.SIGTERM, None)  # one worker failed: stop the rest cleanly
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    if any(p.returncode not in (0, -signal.SIGTERM) for p in procs):
        code = code or 1
    return code

