"""A/B end to end: units split by weight, the variant serves and is told to the caller,
outcomes come back (bad and duplicate events included), and the report finds the effect."""

from __future__ import annotations

import asyncio

import aiohttp
import duckdb
import grpc
import numpy as np

from analysis.experiment import analyze_experiments
from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.sink.schema import migrate
from tests.conftest import sidecar_config


async def test_ab_split_outcomes_and_report(echo, tmp_path) -> None:
    control, treat = await echo(), await echo()
    db = tmp_path / "ab.duckdb"
    data = sidecar_config(
        db, {"v7": control.target, "v8": treat.target},
        [{
            "match": "/fraud.Model/Score", "primary": "v7",
            "experiment": {
                "name": "threshold-test", "unit": {"metadata": "x-user-id"},
                "variants": [{"name": "control", "backend": "v7", "weight": 30},
                             {"name": "treat", "backend": "v8", "weight": 70}],
            },
        }],
        storage={"path": str(db), "flush_interval_ms": 20},
    )
    data["admin"]["token"] = "tok"
    sc = Sidecar(parse_config(data))
    await sc.start()
    users = [f"user-{i}" for i in range(1500)]
    assigned: dict[str, str] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
        stub = ch.unary_unary("/fraud.Model/Score")

        async def call(user: str) -> None:
            c = stub(user.encode(), metadata=(("x-user-id", user),))
            await c
            md = dict(await c.trailing_metadata())
            assert md["x-experiment"] == "threshold-test"
            assigned[user] = md["x-variant"]

        for i in range(0, len(users), 50):
            await asyncio.gather(*(call(u) for u in users[i:i + 50]))
        # The same unit always gets the same variant; a request without a unit is not exposed.
        again = stub(b"x", metadata=(("x-user-id", users[0]),))
        await again
        assert dict(await again.trailing_metadata())["x-variant"] == assigned[users[0]]
        anon = stub(b"x")
        await anon
        assert "x-variant" not in dict(await anon.trailing_metadata())

    share_treat = list(assigned.values()).count("treat") / len(users)
    assert abs(share_treat - 0.7) < 0.04
    # Each variant's backend served exactly its units (plus the repeat and the anonymous call).
    n_treat = list(assigned.values()).count("treat")
    assert treat.calls == n_treat + (assigned[users[0]] == "treat")
    assert control.calls == len(users) - n_treat + (assigned[users[0]] == "control") + 1

    # Outcomes: treat converts at 30%, control at 20% (a planted effect).
    rng = np.random.default_rng(5)
    events = []
    for i, (user, variant) in enumerate(assigned.items()):
        if rng.random() < (0.30 if variant == "treat" else 0.20):
            events.append({"event_id": f"e{i}", "unit_id": user, "metric": "converted",
                           "value": 1})
    bad = [{"event_id": "bad-1", "unit_id": "u", "metric": "converted", "value": "yes"},
           {"unit_id": "u", "metric": "converted", "value": 1}]
    url = f"http://127.0.0.1:{sc.admin.port}/v1/outcomes"
    auth = {"Authorization": "Bearer tok"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"events": events[:10]}) as resp:
            assert resp.status == 401
        async with http.post(url, json={"events": events + bad}, headers=auth) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["accepted"] == len(events)
        assert [r["index"] for r in body["rejected"]] == [len(events), len(events) + 1]
        assert "value" in body["rejected"][0]["reason"]
        async with http.post(url, json={"events": events[:5]}, headers=auth) as resp:
            body = await resp.json()
        assert body["accepted"] == 0 and len(body["duplicates"]) == 5
    await sc.aclose()

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM outcomes").fetchall()[0][0] == len(events)
    exposures = dict(con.execute(
        "SELECT variant, count(DISTINCT unit_id) FROM requests WHERE exposed GROUP BY variant"
    ).fetchall())
    assert exposures == {"control": len(users) - n_treat, "treat": n_treat}
    con.close()
    view = duckdb.connect()
    view.execute(f"ATTACH '{db}' AS rec (READ_ONLY)")
    for table in ("requests", "outcomes", "configs"):
        view.execute(f"CREATE VIEW {table} AS SELECT * FROM rec.{table}")
    report = analyze_experiments(view, source="recorded").to_dict()
    exp = report["experiments"][0]
    assert exp["name"] == "threshold-test"
    assert exp["srm"]["flag"] is False
    row = next(r for r in exp["results"] if r["metric"] == "converted")
    assert row["variant"] == "treat" and row["control"] == "control"
    assert row["n_variant"] == n_treat
    assert row["abs_ci"][0] > 0  # the planted +10 points is found
    assert 0.05 < row["abs_effect"] < 0.15


def test_schema_is_migrated_for_fixtures(tmp_path) -> None:
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    migrate(con)
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert {"requests", "calls", "outcomes", "audit", "configs", "canary_state"} <= tables
    con.close()
