"""Gold sets on a service of our own (not OIP) under both JSON codecs: capture writes the
decoded fields and the route's codec, run compares them with per-field tolerances
(issue 20, item 4)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.gold.cli import main as gold_main
from tests.streams.service import GENERATE, SCORE, GenServer, build_file_set, codec_spec, routes

N = 12


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def gen_set(tmp_path: Path) -> Any:
    return build_file_set(tmp_path)


@pytest.fixture
async def servers(gen_set: Any) -> AsyncIterator[dict[str, GenServer]]:
    file_set, _ = gen_set
    started = {
        "primary": await GenServer(file_set).start(),
        # the same answers but a score 0.01 higher for n = 3: within 0.05, beyond 1e-3
        "close": await GenServer(file_set, bump={3: 0.01}).start(),
        "mute": await GenServer(file_set, reflect=False).start(),
    }
    yield started
    for server in started.values():
        await server.stop()


async def gold(*argv: str) -> int:
    return await asyncio.to_thread(gold_main, list(argv))


@pytest.mark.parametrize("kind", ["descriptor", "reflection"])
async def test_capture_then_run_compares_decoded_fields(
    kind: str, gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any,
    channel_to: Any, tmp_path: Path, capsys: Any,
) -> None:
    """Issue 20.4: cases captured on a non-OIP route failed against the same model ("not a
    ModelInferResponse"); with --codec raw they wanted a response_b64 capture never wrote."""
    primary = servers["primary"]
    db = tmp_path / "t.duckdb"
    sc = await start_sidecar(
        {"p": primary.target}, routes(codec_spec(kind, gen_set[1]), (SCORE, GENERATE)),
        db_path=db, storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True})
    stub = channel_to(sc.port).unary_unary(SCORE)
    # The caller's request ids: the sample (hashed on them with the seed) is the same every run;
    # with the sidecar's random ids, 8 of 12 missed all three n = 3 calls about one run in 55.
    for i in range(N):
        await stub(primary.prompt(text=f"q{i}", n=i % 4).SerializeToString(), timeout=5,
                   metadata=(("x-request-id", f"gold-{i:02d}"),))
    await sc.aclose()

    out = tmp_path / "set.jsonl"
    assert await gold("capture", "--from", str(db), "--route", SCORE, "--n", "8",
                      "--stratify", "none", "-o", str(out)) == 0
    cases = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(cases) == 8
    assert all(set(c["expected"]) == {"fields"} for c in cases)
    assert all(set(c["expected"]["fields"]) == {"score", "text"} for c in cases)
    assert {c["codec"].split(":")[0] for c in cases} == {kind}
    capsys.readouterr()
    assert await gold("run", "--set", str(out), "--target", primary.target) == 0
    assert "8 passed, 0 regressions, 0 errors" in capsys.readouterr().out
    # The close model: n = 3 answers differ by 0.01, beyond the default tolerance ...
    threes = sum(1 for c in cases if c["expected"]["fields"]["score"] == [0.3])
    assert threes
    assert await gold("run", "--set", str(out), "--target", servers["close"].target) == 1
    text = capsys.readouterr().out
    assert f"{8 - threes} passed, {threes} regressions" in text and "score: 1 of 1" in text
    # ... and within a per-field tolerance written by capture.
    tolerant = tmp_path / "tolerant.jsonl"
    assert await gold("capture", "--from", str(db), "--route", SCORE, "--n", "8",
                      "--stratify", "none", "--field-tol", "score=0.05", "-o",
                      str(tolerant)) == 0
    assert json.loads(tolerant.read_text().splitlines()[0])["tolerances"] == {
        "score": {"atol": 0.05, "rtol": 0.001}}
    assert await gold("run", "--set", str(tolerant), "--target",
                      servers["close"].target) == 0
    # A target without reflection: the descriptor set decodes; reflection cannot, exit 2.
    assert await gold("run", "--set", str(out), "--target", servers["mute"].target,
                      "--codec", f"descriptor:{gen_set[1]}") == 0
    capsys.readouterr()
    assert await gold("run", "--set", str(out), "--target", servers["mute"].target,
                      "--codec", "reflection") == 2
    assert "descriptor:FILE" in capsys.readouterr().err


async def test_a_streaming_route_is_refused_with_a_reason(
    gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any,
    tmp_path: Path, capsys: Any,
) -> None:
    primary = servers["primary"]
    db = tmp_path / "t.duckdb"
    sc = await start_sidecar(
        {"p": primary.target}, routes(f"descriptor:{gen_set[1]}", (GENERATE,)),
        db_path=db, storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True})
    body = primary.prompt(text="q", n=2).SerializeToString()
    assert len([m async for m in channel_to(sc.port).unary_stream(GENERATE)(body)]) == 2
    await sc.aclose()
    assert await gold("capture", "--from", str(db), "--route", GENERATE, "-o",
                      str(tmp_path / "s.jsonl")) == 2
    assert "streams (server)" in capsys.readouterr().err


def test_bad_field_tolerances_exit_2(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "request_b64": "AA==", "expected": {"fields": {"x": 1}}, '
                   '"tolerances": {"x": {"atol": -1}}}\n')
    assert gold_main(["run", "--set", str(bad), "--target", "127.0.0.1:1"]) == 2
    assert "line 1" in capsys.readouterr().err
    assert gold_main(["capture", "--from", str(bad), "--route", SCORE, "--field-tol", "x",
                      "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "PATH=ATOL" in capsys.readouterr().err


async def test_a_raw_route_captures_bytes_and_runs(
    servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any, tmp_path: Path,
    capsys: Any,
) -> None:
    """Issue 20.4, the raw codec: capture writes the answer's bytes, run compares them."""
    primary = servers["primary"]
    db = tmp_path / "raw.duckdb"
    sc = await start_sidecar(
        {"p": primary.target}, [{"match": SCORE, "primary": "p"}], db_path=db,
        storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True})
    stub = channel_to(sc.port).unary_unary(SCORE)
    for i in range(4):
        await stub(primary.prompt(text=f"q{i}", n=i).SerializeToString(), timeout=5)
    await sc.aclose()
    out = tmp_path / "raw.jsonl"
    assert await gold("capture", "--from", str(db), "--route", SCORE, "-o", str(out)) == 0
    cases = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(cases) == 4 and all(set(c["expected"]) == {"response_b64"} for c in cases)
    assert await gold("run", "--set", str(out), "--target", primary.target,
                      "--codec", "raw") == 0
    assert await gold("run", "--set", str(out), "--target", servers["close"].target,
                      "--codec", "raw") == 1
    assert "response bytes differ" in capsys.readouterr().out
