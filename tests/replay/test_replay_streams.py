"""Replay on a service of our own (not OIP) under both JSON codecs: streams replayed as
streams, answers decoded with the route's codec, failures exit 1 and are retried on resume,
a resume may not change its target (issue 20, items 2, 3 and 6)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis.divergence import analyze_divergence
from analysis.field_diff import analyze_field_diff
from analysis.load import open_source
from sidecar.replay import ReplayInputError, ReplayOptions, replay
from sidecar.replay.cli import main as cli_main
from tests.streams.service import (
    CHAT,
    GENERATE,
    SCORE,
    GenServer,
    build_file_set,
    codec_spec,
    routes,
)

N = 6


@pytest.fixture
def gen_set(tmp_path: Path) -> Any:
    return build_file_set(tmp_path)


@pytest.fixture
async def servers(gen_set: Any) -> AsyncIterator[dict[str, GenServer]]:
    file_set, _ = gen_set
    started = {"primary": await GenServer(file_set).start(),
               "candidate": await GenServer(file_set, bump={0: 0.5}, model="gen-2").start()}
    yield started
    for server in started.values():
        await server.stop()


async def record(servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any,
                 db: Path, codec: str) -> None:
    """N unary calls and N server streams of 4 messages, recorded with their bytes."""
    primary = servers["primary"]
    sc = await start_sidecar({"p": primary.target}, routes(codec, (SCORE, GENERATE)),
                             db_path=db, storage={"path": str(db), "flush_interval_ms": 50,
                                                  "record_bytes": True})
    ch = channel_to(sc.port)
    for i in range(N):
        body = primary.prompt(text=f"q{i}", n=4).SerializeToString()
        await ch.unary_unary(SCORE)(body, metadata=(("x-request-id", f"u{i}"),), timeout=5)
        got = [m async for m in ch.unary_stream(GENERATE)(
            body, metadata=(("x-request-id", f"s{i}"),), timeout=5)]
        assert len(got) == 4
    await sc.aclose()


def opts(db: Path, route: str, target: str, tmp_path: Path, **kw: Any) -> ReplayOptions:
    return replace(ReplayOptions(source=str(db), route=route, target=target,
                                 backend_name="gen-2", backend_version="2", run_id="r1",
                                 out=str(tmp_path / "out.duckdb"), progress=False), **kw)


@pytest.mark.parametrize("kind", ["descriptor", "reflection"])
async def test_server_stream_replayed_as_a_stream_and_decoded(
    kind: str, gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any,
    channel_to: Any, tmp_path: Path,
) -> None:
    """Issue 20.2 and 20.3: a server-streaming route is replayed as streams (it was sent as
    unary calls: DEADLINE_EXCEEDED) and the answers of a descriptor or reflection route are
    decoded (none were), so the fields report compares them with the primary's."""
    db = tmp_path / "t.duckdb"
    await record(servers, start_sidecar, channel_to, db, codec_spec(kind, gen_set[1]))
    for route in (GENERATE, SCORE):
        out = str(tmp_path / f"{route.rsplit('/', 1)[1]}.duckdb")
        result = await replay(opts(db, route, servers["candidate"].target, tmp_path, out=out))
        assert (result.sent, result.ok, result.failed) == (N, N, 0)
        con = duckdb.connect(out, read_only=True)
        rows = con.execute("SELECT status, messages, response_json FROM calls "
                           "WHERE role = 'replay' ORDER BY request_id").fetchall()
        # a stream's messages are decoded one by one (issue 20.1), the primary's copied
        docs = con.execute("SELECT role, message_json FROM stream_messages "
                           "ORDER BY role, request_id, idx").fetchall()
        con.close()
        assert len(rows) == N
        for status, messages, doc in rows:
            assert status == "OK"
            if route == GENERATE:
                assert messages == 4 and doc is None
            else:
                assert messages is None and json.loads(doc)["model"] == "gen-2"
        if route == GENERATE:
            assert [r for r, _ in docs] == ["primary"] * 4 * N + ["replay"] * 4 * N
            assert all(json.loads(d)["model"] == ("gen-2" if r == "replay" else "gen-1")
                       for r, d in docs)
        report = analyze_field_diff(open_source(db=out)).to_dict()
        (pair,) = report["pairs"]
        fields = {f["path"]: f["diff_rate"] for f in pair["fields"]}
        assert pair["shadow"] == "gen-2" and pair["n"] == (4 * N if route == GENERATE else N)
        assert fields["model"] == 1.0 and fields["text"] == 0.0


async def test_failed_calls_exit_1_and_a_resume_sends_them_again(
    gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any,
    tmp_path: Path, capsys: Any,
) -> None:
    """Issue 20.6: every call failing exited 0, and a resume sent nothing again."""

    async def replay_main(argv: list[str]) -> int:
        return await asyncio.to_thread(cli_main, argv)

    db = tmp_path / "t.duckdb"
    await record(servers, start_sidecar, channel_to, db, f"descriptor:{gen_set[1]}")
    out = tmp_path / "out.duckdb"
    args = ["--from", str(db), "--route", SCORE, "--backend-name", "gen-2",
            "--backend-version", "2", "--run-id", "r1", "--out", str(out), "--no-progress",
            "--codec", f"descriptor:{gen_set[1]}", "--timeout-ms", "2000"]
    candidate = servers["candidate"]
    candidate.fail = True
    assert await replay_main([*args, "--to", candidate.target]) == 1
    err = capsys.readouterr().err
    assert f"{N} errors" in err and "send them again" in err
    candidate.fail = False
    assert await replay_main([*args, "--to", candidate.target]) == 0
    err = capsys.readouterr().err
    assert f"{N} sent ({N} OK, 0 errors, {N} of them failed before)" in err
    con = duckdb.connect(str(out), read_only=True)
    rows = con.execute("SELECT status, count(*) FROM calls WHERE role = 'replay' "
                       "GROUP BY 1").fetchall()
    con.close()
    assert rows == [("OK", N)]  # the failed rows were replaced, not paired twice
    # Nothing left to send: exit 0, nothing sent.
    assert await replay_main([*args, "--to", candidate.target]) == 0
    # A closed port: every call fails, exit 1.
    closed = ["--run-id", "r2", "--out", str(tmp_path / "closed.duckdb")]
    assert await replay_main([*args[:8], *args[12:], *closed, "--to", "127.0.0.1:1"]) == 1


async def test_a_resume_may_not_change_target_or_backend(
    gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any,
    tmp_path: Path,
) -> None:
    """Issue 20.6: the same run id accepted another target and backend name."""
    db = tmp_path / "t.duckdb"
    await record(servers, start_sidecar, channel_to, db, f"descriptor:{gen_set[1]}")
    first = opts(db, SCORE, servers["candidate"].target, tmp_path, limit=2)
    assert (await replay(first)).sent == 2
    with pytest.raises(ReplayInputError, match="target"):
        await replay(replace(first, target=servers["primary"].target))
    with pytest.raises(ReplayInputError, match="backend 'gen-2'"):
        await replay(replace(first, backend_name="gen-3"))
    rest = await replay(replace(first, limit=None))
    assert (rest.already_done, rest.sent) == (2, N - 2)


async def test_reflection_without_an_answer_and_a_missing_descriptor_are_usage_errors(
    gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    file_set, _ = gen_set
    db = tmp_path / "t.duckdb"
    monkeypatch.chdir(tmp_path)
    await record(servers, start_sidecar, channel_to, db, "descriptor:gen.pb")  # relative
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    mute = await GenServer(file_set, reflect=False).start()
    try:
        # The recorded relative path is found beside the source.
        assert (await replay(opts(db, SCORE, mute.target, tmp_path))).ok == N
        with pytest.raises(ReplayInputError, match="descriptor:FILE"):
            await replay(opts(db, SCORE, mute.target, tmp_path, codec="reflection",
                              run_id="r2"))
        with pytest.raises(ReplayInputError, match="no file"):
            await replay(opts(db, SCORE, mute.target, tmp_path, codec="descriptor:nope.pb",
                              run_id="r3"))
    finally:
        await mute.stop()


@pytest.mark.parametrize("kind", ["descriptor", "reflection"])
async def test_bidi_stream_replayed_message_by_message(
    kind: str, gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any,
    channel_to: Any, tmp_path: Path,
) -> None:
    """Issue 20.2: a bidi route was replayed as one glued message ("4 OK"); now the caller's
    recorded messages go one by one and the candidate's answers pair message by message."""
    primary = servers["primary"]
    db = tmp_path / "t.duckdb"
    sc = await start_sidecar({"p": primary.target}, routes(codec_spec(kind, gen_set[1]), (CHAT,)),
                             db_path=db, storage={"path": str(db), "flush_interval_ms": 50,
                                                  "record_bytes": True})
    ch = channel_to(sc.port)

    async def prompts(i: int) -> Any:
        for j in range(3):
            yield primary.prompt(text=f"c{i}-{j}").SerializeToString()

    for i in range(N):
        got = [m async for m in ch.stream_stream(CHAT)(
            prompts(i), metadata=(("x-request-id", f"b{i}"),), timeout=5)]
        assert len(got) == 3
    await sc.aclose()
    out = str(tmp_path / "bidi.duckdb")
    result = await replay(opts(db, CHAT, servers["candidate"].target, tmp_path, out=out,
                               pace=True))
    assert (result.sent, result.ok) == (N, N)
    con = open_source(db=out)
    try:
        texts = con.execute("SELECT list(message_json->>'text' ORDER BY idx) FROM "
                            "stream_messages WHERE role = 'replay' GROUP BY request_id "
                            "ORDER BY request_id").fetchall()
        (pair,) = analyze_divergence(con, route=CHAT).to_dict()["pairs"]
    finally:
        con.close()
    assert texts[0][0] == ["C0-0", "C0-1", "C0-2"]  # three messages, not one glued
    streams = pair["streams"]
    assert streams["streams"]["n"] == N and streams["streams"]["length_mismatch"] == 0
    # the candidate's first message of each stream scores 0.5 higher
    assert (streams["messages"]["n"], streams["messages"]["differ"]) == (3 * N, N)
    assert streams["messages"]["differ_at"] == {"first": N, "middle": 0, "last": 0}


async def test_a_caller_stream_without_its_messages_is_a_usage_error(
    gen_set: Any, servers: dict[str, GenServer], start_sidecar: Any, channel_to: Any,
    tmp_path: Path,
) -> None:
    """A bidi route recorded without per-message bytes cannot be replayed: exit 2 with the
    reason (it was replayed as one glued message)."""
    primary = servers["primary"]
    db = tmp_path / "t.duckdb"
    sc = await start_sidecar({"p": primary.target}, routes(f"descriptor:{gen_set[1]}", (CHAT,)),
                             db_path=db, storage={"path": str(db), "flush_interval_ms": 50,
                                                  "record_bytes": True})

    async def one() -> Any:
        yield primary.prompt(text="x").SerializeToString()

    assert len([m async for m in channel_to(sc.port).stream_stream(CHAT)(one())]) == 1
    await sc.aclose()
    con = duckdb.connect(str(db))
    con.execute("UPDATE stream_messages SET message_bytes = NULL").fetchall()  # as if older
    con.close()
    with pytest.raises(ReplayInputError, match="streams from the caller"):
        await replay(opts(db, CHAT, servers["candidate"].target, tmp_path))
