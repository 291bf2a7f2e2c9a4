"""Client and bidi streams are mirrored like server streams: each sampled shadow gets the
caller's messages as they pass, is recorded message by message and compared; a shadow
that falls behind is ended without holding the caller back; a caller who cancels ends the
shadow's copy too (over a service of our own, with real grpc.aio servers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis.divergence import analyze_divergence
from analysis.load import open_source
from sidecar.mirror import feeds
from sidecar.mirror.feeds import BEHIND_DETAILS
from sidecar.mirror.streams import CUT_DETAILS
from tests.streams.service import (
    CHAT,
    COLLECT,
    GenServer,
    build_file_set,
    codec_spec,
    routes,
    shadow_copy_done,
)


def _rows(db: Path) -> dict[str, tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {role: (status, messages, error) for role, status, messages, error in
                con.execute("SELECT role, status, messages, error FROM calls").fetchall()}
    finally:
        con.close()


async def _chat_sidecar(start_sidecar: Any, pb: Path, primary: GenServer, shadow: GenServer,
                        db: Path) -> Any:
    """A sidecar with the Chat route (bidi), its shadow on ``shadow``, recording to ``db``."""
    route = routes(codec_spec("descriptor", pb), (CHAT,))[0]
    route["shadows"] = [{"backend": "s", "timeout_ms": 60_000}]
    return await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                               db_path=db, storage={"path": str(db), "flush_interval_ms": 50})


async def test_client_and_bidi_streams_reach_the_shadow_and_are_compared(
    tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set, bump_for={"b": {1: 0.5}}, model="gen-2").start()
    db = tmp_path / "m.duckdb"
    try:
        spec = codec_spec("descriptor", pb)
        shadows = [{"backend": "s", "timeout_ms": 5000}]
        sc = await start_sidecar(
            {"p": primary.target, "s": shadow.target},
            [{**r, "shadows": shadows} for r in routes(spec, (COLLECT, CHAT))],
            db_path=db, storage={"path": str(db), "flush_interval_ms": 50})
        ch = channel_to(sc.port)
        texts = ["a", "b", "c", "d"]

        async def prompts() -> Any:
            for text in texts:
                yield primary.prompt(text=text, n=1).SerializeToString()

        collected = primary.token.FromString(await ch.stream_unary(COLLECT)(prompts(),
                                                                            timeout=5))
        chat = [primary.token.FromString(m)
                async for m in ch.stream_stream(CHAT)(prompts(), timeout=5)]
        # The caller hears the primary only.
        assert (collected.text, collected.model) == ("a|b|c|d", "gen-1")
        assert [t.text for t in chat] == ["A", "B", "C", "D"]
        assert {t.model for t in chat} == {"gen-1"}
        for _ in range(200):  # the shadows answer in the background
            if shadow.calls == 2 and sc.mirror.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        lanes = {route: sc.live.lane(route, "s").as_dict() for route in (COLLECT, CHAT)}
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    assert shadow.calls == 2 and shadow.written == 4  # the shadow's chat saw all 4 messages
    for lane in lanes.values():
        assert (lane["sampled"], lane["sent"], lane["answered"], lane["dropped"]) == (1, 1, 1, 0)
    con = duckdb.connect(str(db), read_only=True)
    calls = con.execute("SELECT method, role, status, messages FROM calls "
                        "ORDER BY method, role").fetchall()
    kept = dict(con.execute("SELECT role, count(*) FROM stream_messages WHERE method = ? "
                            "AND direction = 'response' GROUP BY 1", [CHAT]).fetchall())
    shadow_answer = con.execute("SELECT response_json FROM calls WHERE method = ? AND "
                                "role = 'shadow'", [COLLECT]).fetchall()[0][0]
    con.close()
    assert calls == [(CHAT, "primary", "OK", 4), (CHAT, "shadow", "OK", 4),
                     (COLLECT, "primary", "OK", 1), (COLLECT, "shadow", "OK", 1)]
    assert kept == {"primary": 4, "shadow": 4}
    assert '"a|b|c|d"' in shadow_answer and '"gen-2"' in shadow_answer
    src = open_source(db=str(db))
    try:
        (pair,) = analyze_divergence(src, route=CHAT).to_dict()["pairs"]
    finally:
        src.close()
    assert pair["streams"]["messages"]["n"] == 4
    assert pair["streams"]["messages"]["differ"] == 1  # message 1 of "b": score + 0.5


async def test_a_shadow_that_falls_behind_is_ended_and_the_caller_never_waits(
    tmp_path: Path, start_sidecar: Any, channel_to: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shadow that takes the caller's messages slower than they come is ended once its
    backlog passes the cap: recorded CANCELLED with the reason, and the caller's stream
    runs at the primary's pace."""
    monkeypatch.setattr(feeds, "MAX_BEHIND", (32, 256 << 10))
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    # 0.5 s a message; no BDP probing, so its transport's window stays at the initial
    # size and the backlog builds in the sidecar, not in the shadow's socket buffers.
    shadow = await GenServer(file_set, delay_s=0.5,
                             options=[("grpc.http2.bdp_probe", 0)]).start()
    db = tmp_path / "b.duckdb"
    n = 400
    try:
        sc = await _chat_sidecar(start_sidecar, pb, primary, shadow, db)
        ch = channel_to(sc.port)
        big = "x" * 16_000

        async def prompts() -> Any:
            for i in range(n):
                yield primary.prompt(text=f"{i}{big}", n=1).SerializeToString()

        loop = asyncio.get_running_loop()
        began = loop.time()
        got = [m async for m in ch.stream_stream(CHAT)(prompts(), timeout=60)]
        took = loop.time() - began
        assert len(got) == n
        assert took < 20  # the shadow alone would need n * 0.5 s = 200 s
        await asyncio.wait_for(shadow.ended.wait(), 20)
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    rows = _rows(db)
    assert rows["primary"][:2] == ("OK", n)
    status, messages, error = rows["shadow"]
    assert status == "CANCELLED" and error == BEHIND_DETAILS and messages < n


async def test_a_caller_who_cancels_a_bidi_stream_ends_the_shadows_copy(
    tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set).start()
    db = tmp_path / "c.duckdb"
    try:
        sc = await _chat_sidecar(start_sidecar, pb, primary, shadow, db)
        ch = channel_to(sc.port)
        stop = asyncio.Event()

        async def prompts() -> Any:
            for i in range(3):
                yield primary.prompt(text=f"m{i}", n=1).SerializeToString()
            await stop.wait()  # the caller holds its stream open, then gives up

        call = ch.stream_stream(CHAT)(prompts(), timeout=60)
        got = []
        async for message in call:
            got.append(message)
            if len(got) == 3:
                call.cancel()
                break
        await shadow_copy_done(sc, shadow)
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    rows = _rows(db)
    assert rows["primary"][0] == "CANCELLED"
    status, _, error = rows["shadow"]
    assert status == "CANCELLED" and error == CUT_DETAILS


async def test_a_bidi_copy_past_the_shadows_cap_is_dropped_and_recorded(
    tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    """The unary rules hold for every kind of stream: a copy past the shadow's
    ``max_in_flight`` is never sent, leaves a DROPPED row and is counted, while the caller's
    stream is served as usual."""
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set, delay_s=1.0).start()
    db = tmp_path / "d.duckdb"
    try:
        route = routes(codec_spec("descriptor", pb), (CHAT,))[0]
        route["shadows"] = [{"backend": "s", "timeout_ms": 60_000, "max_in_flight": 1}]
        sc = await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                                 db_path=db, storage={"path": str(db), "flush_interval_ms": 50})
        ch = channel_to(sc.port)

        async def chat(tag: str) -> list[bytes]:
            async def prompts() -> Any:
                for i in range(3):
                    yield primary.prompt(text=f"{tag}{i}", n=1).SerializeToString()

            return [m async for m in ch.stream_stream(CHAT)(prompts(), timeout=30)]

        first = await chat("a")  # its shadow copy takes ~3 s: the one slot stays taken
        second = await chat("b")
        assert len(first) == len(second) == 3
        lane = sc.live.lane(CHAT, "s").as_dict()
        for _ in range(1000):  # the first copy finishes in the background
            if sc.mirror.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    assert (lane["sampled"], lane["sent"], lane["dropped"]) == (2, 1, 1)
    con = duckdb.connect(str(db), read_only=True)
    statuses = sorted(r[0] for r in con.execute(
        "SELECT status FROM calls WHERE role = 'shadow'").fetchall())
    con.close()
    assert statuses == ["DROPPED", "OK"]
