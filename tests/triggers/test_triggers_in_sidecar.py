"""Triggers evaluated by a running sidecar: fired ones are audited, exposed as a metric and
sent to the webhook; `sidecar check` exits 1 on the same data."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import yaml
from aiohttp import web

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
from tests.conftest import sidecar_config

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def test_divergence_trigger_fires_and_notifies(tmp_path, channel_to) -> None:
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    model, retrained = make_demo_models()
    servers = [await start_model_server(model), await start_model_server(retrained)]
    db = tmp_path / "t.duckdb"
    data = sidecar_config(
        db, {"v1": servers[0].target, "v2": servers[1].target},
        [{"match": METHOD, "primary": "v1", "codec": "oip", "shadows": [{"backend": "v2"}]}],
        storage={"path": str(db), "flush_interval_ms": 20},
    )
    data["triggers"] = [
        {"name": "v2-diverges", "kind": "divergence", "route": METHOD, "shadow": "v2",
         "max_disagreement": 0.01, "window_h": 1},
        {"name": "v2-quiet", "kind": "divergence", "route": METHOD, "shadow": "v2",
         "max_disagreement": 0.5, "window_h": 1},
    ]
    data["notify"] = {"webhook": f"http://127.0.0.1:{port}/hook", "retries": 0}
    try:
        sc = Sidecar(parse_config(data))
        await sc.start()
        stub = channel_to(sc.port).unary_unary(METHOD)
        for row in np.random.default_rng(4).standard_normal((300, 8)):
            await stub(build_infer_request("demo", row))
        for _ in range(100):  # let the shadow calls land
            if sc.sink.stats.accepted["calls"] >= 600:
                break
            await asyncio.sleep(0.02)
        results = {r.name: r for r in await sc.check_triggers()}
        assert results["v2-diverges"].fired and not results["v2-quiet"].fired
        text = sc.metrics.render()
        assert 'shadowcar_trigger_fired{trigger="v2-diverges",kind="divergence"} 1' in text
        assert 'shadowcar_trigger_fired{trigger="v2-quiet",kind="divergence"} 0' in text
        audit = await asyncio.to_thread(sc.read_audit, 10)
        assert [a["action"] for a in audit].count("trigger.fired") == 1
        await sc.aclose()  # drains the webhook queue
    finally:
        for s in servers:
            await s.aclose()
        await runner.cleanup()
    assert [e["name"] for e in received] == ["v2-diverges"]
    assert received[0]["kind"] == "trigger" and received[0]["fired"] is True
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(dict(data, notify={})))
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "sidecar", "check", str(cfg), "--db", str(db)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert "FIRED  v2-diverges" in out.stdout and "quiet  v2-quiet" in out.stdout
