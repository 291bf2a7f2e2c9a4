"""Worker 0 speaks for all workers of a ``--workers N`` sidecar: their stats summed, their
Prometheus series side by side with a ``worker`` label."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

__all__ = ["fetch_workers", "merge_metrics", "merge_stats"]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?( .*)$")


async def fetch_workers(ports: list[int], path: str, timeout: float = 2.0) -> list[Any]:
    """GET ``path`` from each worker's admin API on loopback; None for one that is down."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:

        async def one(port: int) -> Any:
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    if resp.status != 200:
                        return None
                    if path.startswith("/metrics"):
                        return await resp.text()
                    return await resp.json()
            except (aiohttp.ClientError, TimeoutError):
                return None

        return list(await asyncio.gather(*(one(p) for p in ports)))


def _add(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, bool) or key in ("sample_percent", "version", "replica"):
            continue
        if isinstance(value, (int, float)) and isinstance(into.get(key), (int, float)):
            into[key] = into[key] + value
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _add(into[key], value)
        elif key not in into:
            into[key] = value


def merge_stats(own: dict[str, Any], others: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Counters summed per route, backend and table; latency windows and pairs listed per
    worker; ``workers_up`` says how many answered."""
    merged = {**own, "routes": [dict(r) for r in own.get("routes", [])]}
    for route in merged["routes"]:
        route["errors"] = dict(route.get("errors", {}))
        route["shadows"] = {k: dict(v) for k, v in route.get("shadows", {}).items()}
    merged["sink"] = {k: (dict(v) if isinstance(v, dict) else v)
                      for k, v in own.get("sink", {}).items()}
    up = 1
    for n, other in enumerate(others, start=1):
        if other is None:
            continue
        up += 1
        by_match = {r["match"]: r for r in merged["routes"]}
        for route in other.get("routes", []):
            mine = by_match.get(route["match"])
            if mine is None:
                merged["routes"].append(route)
            else:
                _add(mine, route)
        _add(merged["sink"], other.get("sink", {}))
        merged["mirror_in_flight"] = merged.get("mirror_in_flight", 0) + other.get(
            "mirror_in_flight", 0)
        merged["latency"] = merged.get("latency", []) + [
            {**x, "worker": n} for x in other.get("latency", [])]
        merged["pairs"] = merged.get("pairs", []) + [
            {**x, "worker": n} for x in other.get("pairs", [])]
    merged["workers"] = len(others) + 1
    merged["workers_up"] = up
    return merged


def _label(line: str, worker: int) -> str:
    m = _SAMPLE.match(line)
    if m is None:
        return line
    name, labels, rest = m.group(1), m.group(2), m.group(3)
    inner = labels[1:-1] if labels else ""
    inner = f'worker="{worker}"' + ("," + inner if inner else "")
    return f"{name}{{{inner}}}{rest}"


def merge_metrics(texts: list[str | None]) -> str:
    """One exposition: each family's HELP/TYPE once, every worker's samples labelled."""
    families: dict[str, list[str]] = {}
    order: list[str] = []
    for worker, text in enumerate(texts):
        if not text:
            continue
        current = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                if family not in families:
                    families[family] = []
                    order.append(family)
                current = family
                if line not in families[family]:
                    families[family].append(line)
            elif line and current is not None:
                families[current].append(_label(line, worker))
    return "".join(line + "\n" for family in order for line in families[family])
