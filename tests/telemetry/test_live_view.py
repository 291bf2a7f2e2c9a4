"""/v1/stats (what the dashboard draws): counters that add up, and only configured rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from analysis import analyze_divergence, open_source
from sidecar.config import parse_config
from sidecar.demo.runner import summarize_recording
from tests.conftest import sidecar_config


async def test_shadow_counters_add_up_in_stats_and_metrics(
    echo, start_sidecar, channel_to
) -> None:
    """Issue 15.9: sampled = sent + dropped and sent = answered + errored + in flight, with
    the same words in /v1/stats and the metrics; dropped copies are not counted as sent."""
    primary, slow, hang = await echo(), await echo(delay_ms=5), await echo(hang=True)
    sc = await start_sidecar(
        {"p": primary.target, "slow": slow.target, "hang": hang.target},
        [{"match": "*", "primary": "p",
          "shadows": [{"backend": "slow"},
                      {"backend": "hang", "max_in_flight": 3, "timeout_ms": 300}]}],
    )
    stub = channel_to(sc.port).unary_unary("/a.B/C")
    for i in range(30):
        try:
            status = "NOT_FOUND" if i % 5 == 0 else "OK"
            await stub(b"x", metadata=(("x-echo-status", status),))
        except grpc.aio.AioRpcError:
            pass
    for _ in range(200):  # the hanging shadow's copies time out
        if sc.mirror.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    shadows = sc.stats()["routes"][0]["shadows"]
    for name, c in shadows.items():
        assert c["sampled"] == 30, name
        assert c["sampled"] == c["sent"] + c["dropped"], (name, c)
        assert c["sent"] == c["answered"] + c["errored"] + c["in_flight"], (name, c)
    assert (shadows["slow"]["sent"], shadows["slow"]["errored"]) == (30, 6)
    assert shadows["slow"]["answered"] == 24
    assert shadows["hang"]["dropped"] > 0 and shadows["hang"]["answered"] == 0
    text = sc.metrics.render()
    values = {
        (s.name, s.labels.get("shadow")): s.value
        for f in text_string_to_metric_families(text) for s in f.samples
        if s.name.startswith("shadowcar_mirror_")
    }
    for name, c in shadows.items():
        for word in ("sampled", "sent", "dropped", "errored", "answered"):
            assert values[(f"shadowcar_mirror_{word}_total", name)] == c[word], (word, name)
    # The recording says the same in the same words: the demo's summary and the report.
    await sc.aclose()
    db = sc.loaded.config.storage.path
    summary = {row["backend"]: row for row in summarize_recording(Path(db))["shadows"]}
    con = open_source(db=db)
    try:
        report = analyze_divergence(con).to_dict()
    finally:
        con.close()
    reported = {pair["shadow"]: pair["shadow_calls"] for pair in report["pairs"]}
    for name, c in shadows.items():
        live = {word: c[word] for word in ("sampled", "sent", "dropped", "errored", "answered")}
        assert {k: summary[name][k] for k in live} == live, name
        assert reported[name] == live, name
    assert summary["slow"]["errors"] == {"NOT_FOUND": 6}


async def test_after_a_reload_rows_of_roles_no_longer_configured_go(
    echo, start_sidecar, channel_to, tmp_path: Path
) -> None:
    """Issue 15.9: the dashboard's latency and pair rows of a shadow removed by a reload
    disappear; the new shadow's rows appear."""
    p, old, new = await echo(), await echo(), await echo()
    backends = {"p": p.target, "old": old.target, "new": new.target}
    sc = await start_sidecar(
        backends, [{"match": "*", "primary": "p", "shadows": [{"backend": "old"}]}]
    )
    stub = channel_to(sc.port).unary_unary("/a.B/C")

    async def traffic_until(backend: str) -> None:
        for _ in range(200):
            await stub(b"x")
            rows = sc.stats()["latency"]
            if any(r["backend"] == backend and r["role"] == "shadow" for r in rows):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no latency row for {backend}")

    await traffic_until("old")
    loaded = parse_config(sidecar_config(
        tmp_path / "sidecar.duckdb", backends,
        [{"match": "*", "primary": "p", "shadows": [{"backend": "new"}]}],
    ))
    assert await sc.reload(loaded, actor="test", reason="swap the shadow")
    stats = sc.stats()
    assert not any(r["backend"] == "old" for r in stats["latency"]), stats["latency"]
    assert any(r["backend"] == "p" and r["role"] == "primary" for r in stats["latency"])
    assert set(stats["routes"][0]["shadows"]) == {"new"}
    await traffic_until("new")
    assert not any(r["backend"] == "old" for r in sc.stats()["latency"])
    assert all(pair["shadow"] == "new" for pair in sc.stats()["pairs"])
    assert {b["name"] for b in sc.stats()["backends"]} == {"p", "old", "new"}
