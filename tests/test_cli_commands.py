"""The README's `sidecar contract docs` and `sidecar models` commands, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sidecar.app import Sidecar
from sidecar.config import parse_config
from tests.conftest import sidecar_config


def _sidecar(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_contract_docs_and_check(tmp_path: Path) -> None:
    contract = tmp_path / "c.yaml"
    contract.write_text(yaml.safe_dump({
        "name": "fraud-score", "version": "3",
        "inputs": [{"name": "payment", "datatype": "FP32", "shape": [-1, 2],
                    "features": [{"name": "amount", "unit": "EUR", "range": [0, 10000]},
                                 {"name": "hour", "range": [0, 23]}]}]}))
    docs = _sidecar("contract", "docs", str(contract))
    assert docs.returncode == 0, docs.stderr
    assert "fraud-score" in docs.stdout and "amount" in docs.stdout and "EUR" in docs.stdout
    check = _sidecar("contract", "check", str(contract))
    assert check.returncode == 0 and "fraud-score@3" in check.stdout
    contract.write_text(yaml.safe_dump({"name": "x", "version": "1", "inputs": []}))
    bad = _sidecar("contract", "check", str(contract))
    assert bad.returncode == 2 and "inputs" in bad.stderr and "Traceback" not in bad.stderr


async def test_models_lists_versions_with_provenance(echo, tmp_path: Path,
                                                     channel_to) -> None:
    primary = await echo()
    db = tmp_path / "m.duckdb"
    data = sidecar_config(db, {"fraud-v7": primary.target}, [{"match": "*",
                                                              "primary": "fraud-v7"}])
    data["backends"][0]["provenance"] = {"code_version": "git:abc123", "owner": "risk-ml"}
    async with Sidecar(parse_config(data)) as sc:
        await channel_to(sc.port).unary_unary("/a.B/C")(b"x")
    out = _sidecar("models", "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    (model,) = json.loads(out.stdout)
    assert model["backend"] == "fraud-v7" and model["version"] == "fraud-v7-v1"
    assert model["provenance"]["code_version"] == "git:abc123"
    assert model["roles"]["primary"]["calls"] == 1
    table = _sidecar("models", "--db", str(db))
    assert table.returncode == 0 and "fraud-v7" in table.stdout


def test_serving_does_not_load_what_only_reports_need() -> None:
    """`sidecar serve` builds the whole command line and the app; neither may pull in the
    statistics stack, aiohttp (no admin configured) or rich: each costs memory in every
    sidecar process and startup time (scipy alone was ~70 MB and a second)."""
    heavy = ("scipy", "statsmodels", "pandas", "aiohttp", "rich", "pyarrow.compute",
             "analysis.divergence", "sidecar.gold.runner", "sidecar.replay.runner")
    probe = (
        "import sys, sidecar.cli, sidecar.app; sidecar.cli.build_parser(); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == ""
    # and the lazy names still resolve where a command needs them
    check = ("import analysis, sidecar.gold, sidecar.replay, sidecar.export, sidecar.outcomes; "
             "print(analysis.analyze_divergence.__module__, sidecar.gold.run_gold.__module__, "
             "sidecar.replay.ReplayStore.__module__, sidecar.export.SegmentExporter.__module__, "
             "sidecar.outcomes.MAX_BODY_BYTES > 0)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["analysis.divergence", "sidecar.gold.cli", "sidecar.replay.store",
                   "sidecar.export.exporter", "True"]
