"""Issue 20.5: a shadow's stream ends when its caller's stream ends early, unless the route
asks for full shadow streams; both over a service of our own under both JSON codecs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis.divergence import analyze_divergence
from analysis.load import open_source
from sidecar.mirror.streams import CUT_DETAILS
from tests.streams.service import (
    GENERATE,
    GenServer,
    build_file_set,
    codec_spec,
    routes,
    shadow_copy_done,
)

MESSAGES = 1000


async def _cancel_after(channel: Any, body: bytes, keep: int) -> list[bytes]:
    call = channel.unary_stream(GENERATE)(body, metadata=(("x-request-id", "cut-1"),),
                                          timeout=30)
    got: list[bytes] = []
    async for message in call:
        got.append(message)
        if len(got) == keep:
            call.cancel()
            break
    return got


@pytest.mark.parametrize(("kind", "full"), [("descriptor", False), ("reflection", False),
                                            ("descriptor", True)])
async def test_shadow_stream_ends_with_the_callers(
    kind: str, full: bool, tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set, delay_s=0.002).start()
    shadow = await GenServer(file_set, delay_s=0.002).start()
    db = tmp_path / "cut.duckdb"
    n = 150 if full else MESSAGES
    try:
        route = routes(codec_spec(kind, pb), (GENERATE,), full_shadow_streams=full,
                       timeout_ms=30_000)[0]
        route["shadows"] = [{"backend": "s", "timeout_ms": 30_000}]
        sc = await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                                 db_path=db)
        body = primary.prompt(text="t", n=n).SerializeToString()
        got = await _cancel_after(channel_to(sc.port), body, 10)
        assert len(got) == 10
        # The shadow's stream ends soon after the caller's (it would run 2 s more if not).
        await shadow_copy_done(sc, shadow)
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    con = duckdb.connect(str(db), read_only=True)
    rows = dict(((role), (status, messages, error)) for role, status, messages, error in
                con.execute("SELECT role, status, messages, error FROM calls").fetchall())
    con.close()
    assert rows["primary"][0] == "CANCELLED"
    status, messages, error = rows["shadow"]
    if full:
        assert (status, messages) == ("OK", n) and shadow.written == n
    else:
        assert status == "CANCELLED" and error == CUT_DETAILS
        assert messages < MESSAGES / 2 and shadow.written < MESSAGES / 2
    # Only the messages both sides sent are compared, and the report says the pair was cut.
    src = open_source(db=str(db))
    try:
        report = analyze_divergence(src, route=GENERATE).to_dict()
        primary_kept = src.execute("SELECT count(*) FROM stream_messages "
                                   "WHERE role = 'primary'").fetchall()[0][0]
    finally:
        src.close()
    (pair,) = report["pairs"]
    assert primary_kept >= 10
    assert pair["streams"]["streams"]["cut"] == 1
    compared = pair["streams"]["messages"]
    assert compared["n"] == min(primary_kept, messages) and compared["differ"] == 0
    assert pair["numeric"] is None or pair["numeric"]["mean_diff"] in (None, 0.0)
    assert any("only messages both sides sent" in note for note in report["notes"])


@pytest.mark.parametrize("path", ["sql", "engine"])
async def test_a_shadow_stream_without_a_message_counts_as_cut(
    path: str, tmp_path: Path, start_sidecar: Any, channel_to: Any,
) -> None:
    """A shadow whose stream fails before its first message (or is cut before it is sent)
    is a cut stream in the report, the primary's messages counted as only the primary's;
    before, a stream side without a kept message vanished and the pair had no stream
    figures at all (``streams: null``), so a shadow failing every stream looked like none."""
    from analysis.divergence_engine import analyze_divergence_engine
    from analysis.engine import duckdb_engine

    file_set, pb = build_file_set(tmp_path)
    primary = await GenServer(file_set).start()
    shadow = await GenServer(file_set).start()
    shadow.fail = True
    db = tmp_path / "fail.duckdb"
    try:
        route = routes(codec_spec("descriptor", pb), (GENERATE,))[0]
        route["shadows"] = [{"backend": "s", "timeout_ms": 5000}]
        sc = await start_sidecar({"p": primary.target, "s": shadow.target}, [route],
                                 db_path=db)
        ch = channel_to(sc.port)
        for i in range(3):
            body = primary.prompt(text=f"t{i}", n=4).SerializeToString()
            got = [m async for m in ch.unary_stream(GENERATE)(
                body, metadata=(("x-request-id", f"f-{i}"),), timeout=10)]
            assert len(got) == 4
        await shadow_copy_done(sc, shadow)
        await sc.aclose()
    finally:
        await primary.stop()
        await shadow.stop()
    src = open_source(db=str(db))
    try:
        report = (analyze_divergence(src, route=GENERATE) if path == "sql"
                  else analyze_divergence_engine(duckdb_engine(src), route=GENERATE)).to_dict()
    finally:
        src.close()
    (pair,) = report["pairs"]
    streams = pair["streams"]["streams"]
    assert (streams["n"], streams["cut"], streams["length_mismatch"]) == (3, 3, 0)
    assert (streams["only_primary_messages"], streams["only_shadow_messages"]) == (12, 0)
    assert pair["streams"]["messages"]["n"] == 0
