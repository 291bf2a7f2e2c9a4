"""Issue 14.5 and 14.10: the admin API against a hostile web page and hostile bytes, on a
real sidecar's aiohttp listener."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.cli import main
from sidecar.config import parse_config
from tests.conftest import sidecar_config

YAML = "application/yaml"


@pytest.fixture
async def tokenless(echo: Any, tmp_path: Path) -> Any:
    """A sidecar on loopback with no admin token (the default), and its config dict."""
    a, b = await echo(), await echo()
    data = sidecar_config(tmp_path / "g.duckdb", {"a": a.target, "b": b.target},
                          [{"match": "*", "primary": "a"}])
    data["admin"]["allowed_hosts"] = ["admin.example.internal", "*.corp.example"]
    sc = Sidecar(parse_config(data))
    await sc.start()
    yield sc, data
    await sc.aclose()


async def _send(port: int, method: str, path: str, body: bytes | str | None = None,
                **headers: str) -> tuple[int, dict[str, Any]]:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    async with aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as http:
        async with http.request(method, f"http://127.0.0.1:{port}{path}", data=body,
                                headers=hdrs) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_a_cross_site_text_plain_post_cannot_reload(tokenless: Any) -> None:
    """Issue 14.5: a web page's form/fetch POST (text/plain, parsed as YAML) reloaded the
    config and could repoint backends. Refused now, whatever the page tries."""
    sc, data = tokenless
    port, version = sc.admin.port, sc.loaded.version
    evil = yaml.safe_dump(dict(data, routes=[{"match": "*", "primary": "b"}]))
    host = f"127.0.0.1:{port}"
    attempts = [
        # what the issue did: a simple cross-site request, no preflight
        {"Content_Type": "text/plain", "Origin": "http://evil.example",
         "Sec_Fetch_Site": "cross-site"},
        {"Content_Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
        {"Content_Type": "multipart/form-data; boundary=x", "Sec_Fetch_Site": "cross-site"},
        # a page on another port of localhost is "same-site", still another origin
        {"Content_Type": YAML, "Origin": "http://localhost:3000", "Sec_Fetch_Site": "same-site"},
        {"Content_Type": YAML, "Origin": "null"},
        # no browser headers, but a type no API client uses for a config
        {"Content_Type": "text/plain"},
        {},
    ]
    for headers in attempts:
        status, body = await _send(port, "POST", "/v1/config", evil, Host=host, **headers)
        assert status in (403, 415), (headers, status, body)
        assert sc.loaded.version == version, headers
    status, _ = await _send(port, "POST", "/v1/outcomes", b'{"events": []}',
                            Content_Type="text/plain")
    assert status == 415
    status, _ = await _send(port, "POST", "/v1/canaries/x/promote", b"{}",
                            Origin="http://evil.example", Content_Type="application/json")
    assert status == 403
    # The admin's own page (same origin) and API clients still work.
    status, body = await _send(port, "POST", "/v1/config", evil, Content_Type=YAML,
                               Origin=f"http://{host}", Sec_Fetch_Site="same-origin")
    assert status == 200 and body["changed"] is True and sc.loaded.version != version
    status, _ = await _send(port, "POST", "/v1/outcomes", b'{"events": []}',
                            Content_Type="application/json; charset=utf-8")
    assert status == 200


async def test_no_other_site_may_frame_the_dashboard(tokenless: Any) -> None:
    """Issue 14.5 (sibling): a page could frame the dashboard and trick a click on its
    promote or rollback buttons; every answer now forbids framing and sniffing."""
    sc, _ = tokenless
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/v1/config", "/nope"):
            async with http.get(f"http://127.0.0.1:{sc.admin.port}{path}") as resp:
                assert resp.headers["X-Frame-Options"] == "SAMEORIGIN", path
                assert resp.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_rebound_host_name_is_refused(tokenless: Any) -> None:
    """Issue 14.5: any Host was accepted, so a DNS-rebinding page could read /v1/config."""
    sc, _ = tokenless
    port = sc.admin.port
    for host in (f"evil.example:{port}", "evil.example", f"admin.example.internal.evil:{port}",
                 f"corp.example:{port}"):
        for path in ("/v1/config", "/metrics", "/"):
            status, body = await _send(port, "GET", path, Host=host)
            assert status == 421 and "admin.allowed_hosts" in body["error"], (host, path)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "10.0.0.7:9901", "[::1]:9901",
                 f"admin.example.internal:{port}", f"ADMIN.example.internal.:{port}",
                 "a.b.corp.example"):
        status, _ = await _send(port, "GET", "/v1/config", Host=host)
        assert status == 200, host


async def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_non_ascii_bearer_bytes_are_401_not_500(echo: Any, tmp_path: Path) -> None:
    """Issue 14.10: ``Authorization: Bearer`` with non-ASCII bytes gave 500."""
    a = await echo()
    data = sidecar_config(tmp_path / "t.duckdb", {"a": a.target}, [{"match": "*", "primary": "a"}])
    data["admin"]["token"] = "s3cr\u00e9t"
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        def post(authorization: bytes) -> bytes:
            return (b"POST /v1/outcomes HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 14\r\n"
                    b"Authorization: " + authorization + b'\r\n\r\n{"events": []}')

        for value in (b"Bearer \xff\xfe\x80", b"Bearer caf\xc3\xa9", b"\xff", b"Bearer s3cr\xe9t"):
            status, body = await _raw(sc.admin.port, post(value))
            assert status == 401, (value, body)
        status, body = await _raw(sc.admin.port, post(b"Bearer s3cr\xc3\xa9t"))
        assert status == 200, body  # the UTF-8 bytes of the token are the token
    finally:
        await sc.aclose()


async def test_hostile_bodies_are_400_not_500(tokenless: Any) -> None:
    """Issue 14.10: a deeply nested POST to /v1/config gave 500; so did other bodies."""
    sc, _ = tokenless
    port, version = sc.admin.port, sc.loaded.version
    bomb = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
        for i in range(1, 9)])
    for body, kind in ((b"[" * 100_000 + b"]" * 100_000, "application/json"),
                       (b"a: " + b"[" * 5000 + b"]" * 5000, YAML),
                       (b"listen: \xff\xfe\n", YAML),
                       (bomb.encode(), YAML)):
        status, answer = await _send(port, "POST", "/v1/config", body, Content_Type=kind)
        assert status == 400 and answer["problems"], (body[:20], answer)
        assert sc.loaded.version == version
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"reason": "\xff"}'):
        status, answer = await _send(port, "POST", "/v1/canaries/%2Fx.Y%2FZ/promote", body,
                                     Content_Type="application/json")
        assert status in (400, 404), answer  # 404: no canary there; never 500
    status, answer = await _send(port, "POST", "/v1/outcomes", b"[" * 100_000,
                                 Content_Type="application/json")
    assert status == 400
    for limit in ("-1", "0", "1e400", "x"):  # -1 reached DuckDB's LIMIT: a 500
        status, answer = await _send(port, "GET", f"/v1/audit?limit={limit}")
        assert status == 400 and answer["error"].startswith("limit:"), limit


def test_serve_refuses_a_token_less_admin_off_loopback(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Issue 14.5: ``serve`` with admin on 0.0.0.0 and no token exits 2 before binding."""
    monkeypatch.delenv("SHADOWCAR_ADMIN_TOKEN", raising=False)
    data = sidecar_config(tmp_path / "never.duckdb", {"a": "127.0.0.1:1"},
                          [{"match": "*", "primary": "a"}])
    data["admin"] = {"listen": "0.0.0.0:0"}
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(data))
    assert main(["serve", "--config", str(file)]) == 2
    assert "admin.listen" in capsys.readouterr().err
    assert not (tmp_path / "never.duckdb").exists()
