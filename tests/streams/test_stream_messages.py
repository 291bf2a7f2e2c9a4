"""Issue 20.1: streams recorded as messages and compared message by message, over a service
of our own (not OIP) under both JSON codecs; the reports' per-message figures on streams
that differ in the first, a middle and the last message, and a length mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis.divergence import analyze_divergence
from analysis.field_diff import analyze_field_diff
from analysis.load import open_source
from tests.streams.service import CHAT, GENERATE, GenServer, build_file_set, codec_spec, routes

#: prompt text -> (message indexes where the shadow's score differs), 5 messages each
DIFFER = {"first": {0: 0.5}, "middle": {2: 0.5}, "last": {4: 0.5}}


def reports(db: Path, route: str) -> tuple[dict[str, Any], dict[str, Any]]:
    con = open_source(db=str(db))
    try:
        return (analyze_divergence(con, route=route).to_dict(),
                analyze_field_diff(con, route=route).to_dict())
    finally:
        con.close()


@pytest.mark.parametrize("kind", ["descriptor", "reflection"])
async def test_server_streams_compared_message_by_message(
    kind: str, tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set, bump_for=DIFFER, extra_for={"longer": 1}).start()
    db = tmp_path / "s.duckdb"
    try:
        route = routes(codec_spec(kind, pb), (GENERATE,))[0]
        route["shadows"] = [{"backend": "s", "timeout_ms": 5000}]
        sc = await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                                 db_path=db, storage={"path": str(db), "flush_interval_ms": 50,
                                                      "record_bytes": True})
        ch = channel_to(sc.port)
        for text in ("first", "middle", "last", "longer", "same"):
            body = primary.prompt(text=text, n=5).SerializeToString()
            assert len([m async for m in ch.unary_stream(GENERATE)(body, timeout=5)]) == 5
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    con = duckdb.connect(str(db), read_only=True)
    kept = dict(con.execute(
        "SELECT role, count(*) FROM stream_messages WHERE direction = 'response' "
        "GROUP BY 1").fetchall())
    row = con.execute(
        "SELECT message_json, score, message_bytes IS NOT NULL FROM stream_messages "
        "WHERE role = 'shadow' AND idx = 0 AND message_json LIKE '%first0%'").fetchall()
    merged = con.execute("SELECT count(response_json) FROM calls").fetchall()[0][0]
    con.close()
    assert kept == {"primary": 25, "shadow": 26}
    assert row and row[0][1] == 0.5 and row[0][2]
    assert merged == 0  # a stream is no longer decoded as one merged message
    divergence, fields = reports(db, GENERATE)
    (pair,) = divergence["pairs"]
    assert pair["streams"]["streams"] == {
        "n": 5, "differ": 3, "cut": 0, "length_mismatch": 1, "only_primary_messages": 0,
        "only_shadow_messages": 1}
    messages = pair["streams"]["messages"]
    assert (messages["n"], messages["differ"]) == (25, 3)
    assert messages["differ_at"] == {"first": 1, "middle": 1, "last": 1}
    assert messages["max_abs"] == pytest.approx(0.5)
    (fpair,) = fields["pairs"]
    rates = {f["path"]: f["diff_rate"] for f in fpair["fields"]}
    assert fpair["n"] == 25 and rates["score"] == pytest.approx(3 / 25)
    assert rates["text"] == 0.0 and rates["index"] == 0.0
    # The fleet export carries the messages: the same figures from Parquet.
    from sidecar.export import ExportConfig, SegmentExporter

    fleet = tmp_path / "fleet"
    SegmentExporter(ExportConfig(dir=str(fleet), replica="r1"),
                    lambda: duckdb.connect(str(db)), str(db)).export_once()
    src = open_source(parquet=str(fleet))
    try:
        (exported,) = analyze_divergence(src, route=GENERATE).to_dict()["pairs"]
        columns = [r[0] for r in src.execute("DESCRIBE stream_messages").fetchall()]
        assert "message_bytes" not in columns  # bytes only with include_bytes
    finally:
        src.close()
    assert exported["streams"] == pair["streams"]


async def test_a_long_stream_differing_from_its_middle_on(
    tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    """The issue's case: 2,000 messages differing from message 1,000 on showed no
    difference (16 messages / 1 MiB kept, decoded merged)."""
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set,
                             bump_for={"long": {i: 1.0 for i in range(1000, 2000)}}).start()
    db = tmp_path / "long.duckdb"
    try:
        route = routes(f"descriptor:{pb}", (GENERATE,))[0]
        route["shadows"] = [{"backend": "s", "timeout_ms": 20_000}]
        route["timeout_ms"] = 20_000
        sc = await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                                 db_path=db)
        body = primary.prompt(text="long", n=2000).SerializeToString()
        got = [m async for m in channel_to(sc.port).unary_stream(GENERATE)(body, timeout=20)]
        assert len(got) == 2000
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    divergence, fields = reports(db, GENERATE)
    messages = divergence["pairs"][0]["streams"]["messages"]
    assert (messages["n"], messages["differ"]) == (2000, 1000)
    rates = {f["path"]: f["diff_rate"] for f in fields["pairs"][0]["fields"]}
    assert rates["score"] == pytest.approx(0.5)


async def test_bounds_keep_the_first_messages_and_count_them_all(
    tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    db = tmp_path / "b.duckdb"
    try:
        sc = await start_sidecar(
            {"p": primary.target}, routes(f"descriptor:{pb}", (GENERATE, CHAT)), db_path=db,
            storage={"path": str(db), "flush_interval_ms": 50, "stream_max_messages": 3})
        ch = channel_to(sc.port)
        body = primary.prompt(text="x", n=7).SerializeToString()
        assert len([m async for m in ch.unary_stream(GENERATE)(body, timeout=5)]) == 7

        async def prompts() -> Any:
            for i in range(5):
                yield primary.prompt(text=f"m{i}").SerializeToString()

        assert len([m async for m in ch.stream_stream(CHAT)(prompts(), timeout=5)]) == 5
        await sc.aclose()
    finally:
        await primary.stop()
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute(
        "SELECT c.method, c.messages, q.messages, "
        "(SELECT count(*) FROM stream_messages m WHERE m.request_id = c.request_id "
        " AND m.direction = 'response'), "
        "(SELECT count(*) FROM stream_messages m WHERE m.request_id = c.request_id "
        " AND m.direction = 'request'), "
        "(SELECT count(*) FROM stream_messages m WHERE m.request_id = c.request_id "
        " AND m.message_bytes IS NOT NULL) "
        "FROM calls c JOIN requests q USING (request_id) ORDER BY c.method").fetchall()
    con.close()
    # (method, response messages seen, caller's seen, responses kept, caller's kept, bytes)
    assert rows == [(CHAT, 5, 5, 3, 3, 0), (GENERATE, 7, None, 3, 0, 0)]


@pytest.mark.parametrize("key", [None, "index"])
async def test_messages_pair_by_the_routes_stream_key(
    key: str | None, tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    """A shadow that sends one more message first: paired by index every message differs;
    paired by the route's stream_key (the token's index field) none does."""
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set, lead_for={"q": 1}).start()
    db = tmp_path / "k.duckdb"
    try:
        route = routes(f"descriptor:{pb}", (GENERATE,), stream_key=key)[0]
        route["shadows"] = [{"backend": "s", "timeout_ms": 5000}]
        sc = await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                                 db_path=db)
        body = primary.prompt(text="q", n=4).SerializeToString()
        assert len([m async for m in channel_to(sc.port).unary_stream(GENERATE)(body)]) == 4
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    divergence, _ = reports(db, GENERATE)
    streams = divergence["pairs"][0]["streams"]
    assert streams["streams"]["length_mismatch"] == 1
    assert streams["streams"]["only_shadow_messages"] == 1
    if key is None:
        assert (streams["messages"]["n"], streams["messages"]["differ"]) == (4, 4)
    else:
        assert (streams["messages"]["n"], streams["messages"]["differ"]) == (4, 0)
