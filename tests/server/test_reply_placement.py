"""Issue 18.1: where x-request-id, x-experiment and x-variant go back to the caller.

Trailing metadata by default (no separate initial-metadata write); ``reply_request_id:
headers`` keeps them in the initial metadata; ``off`` sends none. A backend's own initial
metadata is forwarded as it came in every mode.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from sidecar.config import parse_config
from tests.conftest import sidecar_config

OURS = ("x-request-id", "x-experiment", "x-variant")


class _Backend(grpc.GenericRpcHandler):
    """Unary and server-streaming; both send initial metadata ``model: m-1`` of their own,
    and fail with NOT_FOUND when asked (``x-fail``)."""

    def service(self, details: Any) -> Any:
        if details.method.endswith("/Stream"):
            async def stream(request: bytes, context: Any) -> Any:
                await context.send_initial_metadata((("model", "m-1"),))
                yield request
                yield request

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: Any) -> bytes:
            await context.send_initial_metadata((("model", "m-1"),))
            if dict(context.invocation_metadata()).get("x-fail"):
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
            context.set_trailing_metadata((("backend-trailer", "1"),))
            return request

        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
async def backend_target():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_Backend()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


def _routes(placement: str | None) -> list[dict[str, Any]]:
    extra = {} if placement is None else {"reply_request_id": placement}
    experiment = {"name": "exp", "unit": {"metadata": "x-user"},
                  "variants": [{"name": "only", "backend": "p", "weight": 100}]}
    return [
        {"match": "/m.S/Stream", "primary": "p", "streaming": "server", **extra},
        {"match": "/m.S/*", "primary": "p", "experiment": experiment, **extra},
    ]


def _ours(md: Any) -> dict[str, str]:
    return {k: v for k, v in tuple(md or ()) if k in OURS}


@pytest.mark.parametrize("placement", [None, "trailers", "headers", "off"])
async def test_request_id_placement(placement, backend_target, start_sidecar,
                                    channel_to) -> None:
    sc = await start_sidecar({"p": backend_target}, _routes(placement))
    ch = channel_to(sc.port)
    md = (("x-request-id", "rid-1"), ("x-user", "u1"))
    call = ch.unary_unary("/m.S/Predict")(b"x", metadata=md)
    assert await call == b"x"
    initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
    # the backend's own metadata, as it came, whatever the placement
    assert ("model", "m-1") in tuple(initial)
    assert ("backend-trailer", "1") in tuple(trailing)
    expected = {"x-request-id": "rid-1", "x-experiment": "exp", "x-variant": "only"}
    where = placement or "trailers"
    assert _ours(initial) == (expected if where == "headers" else {})
    assert _ours(trailing) == (expected if where == "trailers" else {})

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ch.unary_unary("/m.S/Predict")(b"x", metadata=(*md, ("x-fail", "1")))
    err = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "no such thing"
    # an error carries them in the same place (grpc.aio gives an error's initial metadata
    # only when they were sent before the status)
    assert _ours(err.trailing_metadata()) == (expected if where == "trailers" else {})
    if where == "headers":
        assert _ours(err.initial_metadata()) == expected

    stream = ch.unary_stream("/m.S/Stream")(b"s", metadata=md)
    assert [m async for m in stream] == [b"s", b"s"]
    initial, trailing = await stream.initial_metadata(), await stream.trailing_metadata()
    assert ("model", "m-1") in tuple(initial)
    rid = {"x-request-id": "rid-1"}  # streams run no experiment
    assert _ours(initial) == (rid if where == "headers" else {})
    assert _ours(trailing) == (rid if where == "trailers" else {})


def test_reply_request_id_is_a_closed_vocabulary(tmp_path) -> None:
    """A placement outside trailers | headers | off is a config error naming the field."""
    from sidecar.errors import ConfigError

    data = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": "*", "primary": "p", "reply_request_id": "initial"}])
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "routes[0].reply_request_id" in str(info.value)


def test_flush_interval_defaults_to_one_second(tmp_path) -> None:
    """Issue 18.1: five times fewer INSERTs; batch_rows still writes early."""
    data = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": "*", "primary": "p"}])
    del data["storage"]["flush_interval_ms"]
    storage = parse_config(data).config.storage
    assert storage.flush_interval_ms == 1000 and storage.batch_rows == 5000
