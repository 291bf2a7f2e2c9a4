"""Issue 14.6: ``shadowcar.v1.Feedback/RecordOutcomes`` follows the rule of
``POST /v1/outcomes``: the admin token when one is set, this host only when none is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from sidecar._proto.shadowcar.v1 import feedback_pb2 as pb
from sidecar._proto.shadowcar.v1 import feedback_pb2_grpc
from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.outcomes import FeedbackAuth
from tests.conftest import sidecar_config

EVENTS = pb.RecordOutcomesRequest(events=[pb.OutcomeEvent(event_id="e1", unit_id="u1",
                                                          metric="click", value=1)])


async def test_grpc_outcomes_need_the_token_like_http(echo: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.6: the gRPC door took outcomes with no credentials while the HTTP one
    needed the token. Both answer the same now, the env token included."""
    backend = await echo()
    data = sidecar_config(tmp_path / "f.duckdb", {"p": backend.target},
                          [{"match": "*", "primary": "p"}])
    monkeypatch.setenv("SHADOWCAR_ADMIN_TOKEN", "t0k")
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as channel:
            stub = feedback_pb2_grpc.FeedbackStub(channel)
            for metadata in ((), (("authorization", "Bearer nope"),),
                             (("authorization", "t0k"),), (("authorization", "Basic t0k"),)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.RecordOutcomes(EVENTS, metadata=metadata, timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
                assert "Bearer" in (info.value.details() or "")
            assert sc.outcomes.accepted_total == 0
            ok = await stub.RecordOutcomes(EVENTS, metadata=(("authorization", "Bearer t0k"),),
                                           timeout=10)
            assert ok.accepted == 1
        url = f"http://127.0.0.1:{sc.admin.port}/v1/outcomes"
        body = {"events": [{"event_id": "e2", "unit_id": "u", "metric": "m", "value": 1}]}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body) as resp:
                assert resp.status == 401
            async with http.post(url, json=body, headers={"Authorization": "Bearer t0k"}) as resp:
                assert resp.status == 200
    finally:
        await sc.aclose()


def test_without_a_token_only_this_host_may_record() -> None:
    """Issue 14.6: with no token the gRPC door on 0.0.0.0 was open to any network peer; now
    only local peers, unless admin.allow_unauthenticated opens it."""
    closed = FeedbackAuth()
    for peer in ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/tmp/s.sock"):
        assert closed.refusal((), peer) is None
    for peer in ("ipv4:10.1.2.3:5000", "ipv6:[2001:db8::1]:5000", "ipv4:0.0.0.0:1", "weird"):
        reason = closed.refusal((), peer)
        assert reason is not None and "admin.token" in reason
    assert FeedbackAuth(open_without_token=True).refusal((), "ipv4:10.1.2.3:5000") is None
    tokened = FeedbackAuth(lambda: "s3cr\u00e9t")
    assert tokened.refusal((("authorization", "Bearer s3cr\u00e9t"),), "ipv4:10.1.2.3:1") is None
    assert tokened.refusal((("authorization", "Bearer \udcff"),), "ipv4:127.0.0.1:1")
    assert tokened.refusal((("authorization", b"Bearer \xff"),), "ipv4:127.0.0.1:1")
