"""Hot reload: validated first, a bad config keeps the old one serving, in-flight calls
finish on their config, unchanged backends keep their channels, versions are immutable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.config import parse_config
from tests.conftest import sidecar_config


async def _post(port: int, text: str, token: str | None = "tok") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["Content-Type"] = "application/yaml"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/config?reason=test", data=text,
                             headers=headers) as resp:
            return resp.status, await resp.json()


async def test_admin_token_from_the_environment_guards_posts(echo, tmp_path,
                                                             monkeypatch) -> None:
    """SHADOWCAR_ADMIN_TOKEN alone (no token in the file, as the Kubernetes example runs)
    guards every POST; it also wins over a token in the file."""
    a = await echo()
    data = sidecar_config(tmp_path / "env.duckdb", {"a": a.target},
                          [{"match": "*", "primary": "a"}])
    monkeypatch.setenv("SHADOWCAR_ADMIN_TOKEN", "from-env")
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        text = yaml.safe_dump(data)
        assert (await _post(sc.admin.port, text, token=None))[0] == 401
        assert (await _post(sc.admin.port, text, token="wrong"))[0] == 401
        status, body = await _post(sc.admin.port, text, token="from-env")
        assert status == 200 and body["changed"] is False
    finally:
        await sc.aclose()
    data["admin"]["token"] = "in-file"
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        assert (await _post(sc.admin.port, yaml.safe_dump(data), token="in-file"))[0] == 401
        assert (await _post(sc.admin.port, yaml.safe_dump(data), token="from-env"))[0] == 200
    finally:
        await sc.aclose()


async def test_reload_through_the_admin_api(echo, tmp_path, channel_to) -> None:
    a, b = await echo(delay_ms=400), await echo()
    data = sidecar_config(tmp_path / "r.duckdb", {"a": a.target, "b": b.target},
                          [{"match": "*", "primary": "a"}])
    data["admin"]["token"] = "tok"
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        stub = channel_to(sc.port).unary_unary("/x.Y/Z")
        old_version = sc.loaded.version
        channel_b = sc.backends["b"]
        in_flight = asyncio.ensure_future(stub(b"slow"))
        await asyncio.sleep(0.1)  # the slow call is on its way to a
        new = dict(data, routes=[{"match": "*", "primary": "b"}])
        status, body = await _post(sc.admin.port, yaml.safe_dump(new), token=None)
        assert status == 401
        status, body = await _post(sc.admin.port, yaml.safe_dump(new))
        assert status == 200 and body["changed"] is True and body["version"] != old_version
        assert await stub(b"new") == b"new"
        assert b.calls == 1  # new calls follow the new config
        assert await in_flight == b"slow"  # the old call finished on the old config
        assert a.calls == 1
        assert sc.backends["b"] is channel_b  # unchanged backend kept its channel

        bad = dict(new, routes=[{"match": "*", "primary": "ghost"}])
        status, body = await _post(sc.admin.port, yaml.safe_dump(bad))
        assert status == 400
        assert body["problems"][0]["path"] == "routes[0].primary"
        assert body["version"] == sc.loaded.version
        assert await stub(b"still") == b"still" and b.calls == 2

        moved = json.loads(json.dumps(new))
        moved["backends"][0]["target"] = b.target  # a's version pointed elsewhere
        status, body = await _post(sc.admin.port, yaml.safe_dump(moved))
        assert status == 400
        assert body["problems"][0]["path"] == "backends[0].target"
        assert "immutable" in body["problems"][0]["message"]

        relisten = dict(new, listen="127.0.0.1:1")
        status, body = await _post(sc.admin.port, yaml.safe_dump(relisten))
        assert status == 400 and body["problems"][0]["path"] == "listen"

        status, body = await _post(sc.admin.port, "{not: [valid")
        assert status == 400
        rows = await asyncio.to_thread(sc.read_audit, 10)
        reloads = [r for r in rows if r["action"] == "config.reload"]
        assert len(reloads) == 1
        detail = json.loads(reloads[0]["detail"])
        assert detail == {"old_version": old_version, "new_version": sc.loaded.version,
                          "file": None, "sighup_rereads": None}
    finally:
        await sc.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def _on_free_ports(data: dict) -> str:
    """Give ``data`` a listener and an admin API on free ports; the admin API's base URL."""
    admin = _free_port()
    data["listen"] = f"127.0.0.1:{_free_port()}"
    data["admin"] = {"listen": f"127.0.0.1:{admin}"}
    return f"http://127.0.0.1:{admin}"


async def _serve(path) -> subprocess.Popen[str]:
    """``sidecar serve --config PATH`` as a child process (stderr kept for the asserts)."""
    return await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "sidecar", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then up to 30 s to exit (killed after); the child's stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


async def _get_config(base: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/config") as resp:
            return await resp.json()


async def _first_config(base: str) -> dict:
    """/v1/config once the child's admin API answers."""
    for _ in range(199):
        try:
            return await _get_config(base)
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    return await _get_config(base)


@pytest.mark.subprocess
async def test_sighup_and_cli_reload_and_audit(echo, tmp_path) -> None:
    a, b = await echo(), await echo()
    data = sidecar_config(tmp_path / "h.duckdb", {"a": a.target, "b": b.target},
                          [{"match": "*", "primary": "a"}])
    base = _on_free_ports(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = await _serve(path)

    async def version() -> str:
        return (await _get_config(base))["version"]

    try:
        first = (await _first_config(base))["version"]
        path.write_text(yaml.safe_dump(dict(data, routes=[{"match": "*", "primary": "b"}])))
        os.kill(proc.pid, signal.SIGHUP)
        for _ in range(100):
            if await version() != first:
                break
            await asyncio.sleep(0.05)
        second = await version()
        assert second != first
        path.write_text("routes: [broken")
        os.kill(proc.pid, signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await version() == second  # the bad file changed nothing
        good = tmp_path / "good.yaml"
        good.write_text(yaml.safe_dump(data))
        res = await asyncio.to_thread(_cli, "reload", "--admin", base, "--config", str(good),
                                      "--reason", "back to a")
        assert res.returncode == 0, res.stderr
        assert "reloaded" in res.stdout and await version() == first
        res = await asyncio.to_thread(_cli, "audit", "--admin", base, "--json")
        assert res.returncode == 0, res.stderr
        actions = [e["action"] for e in json.loads(res.stdout)]
        assert actions[:3] == ["config.reload", "config.reload_rejected", "config.reload"]
        bad_cli = await asyncio.to_thread(_cli, "reload", "--admin", base, "--config",
                                          str(path))
        assert bad_cli.returncode == 2 and "YAML syntax" in bad_cli.stderr
    finally:
        err = _stop(proc)
        assert proc.returncode == 0, err
    t0 = time.time()
    res = _cli("audit", "--db", str(tmp_path / "h.duckdb"))
    assert res.returncode == 0 and "config.reload_rejected" in res.stdout
    assert time.time() - t0 < 30


@pytest.mark.subprocess
async def test_sighup_rereads_the_file_most_recently_loaded(echo, tmp_path) -> None:
    """Issue 15.5: ``sidecar reload --config X`` makes X the file SIGHUP rereads (it was
    silently undone by a SIGHUP rereading the start file); /v1/config names the file and
    each reload logs the rule."""
    a, b = await echo(), await echo()
    data = sidecar_config(tmp_path / "f.duckdb", {"a": a.target, "b": b.target},
                          [{"match": "*", "primary": "a"}])
    base = _on_free_ports(data)
    start = tmp_path / "start.yaml"
    start.write_text(yaml.safe_dump(data))
    other = tmp_path / "sub" / "other.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump(dict(data, routes=[{"match": "*", "primary": "b"}])))
    proc = await _serve(start)

    async def config() -> dict:
        return await _get_config(base)

    async def after_hup(previous: str) -> dict:
        os.kill(proc.pid, signal.SIGHUP)
        for _ in range(200):
            now = await config()
            if now["version"] != previous:
                return now
            await asyncio.sleep(0.05)
        return now

    try:
        first = await _first_config(base)
        assert first["file"] == str(start)
        res = await asyncio.to_thread(_cli, "reload", "--admin", base, "--config",
                                      str(other), "--reason", "to b")
        assert res.returncode == 0, res.stderr
        assert f"SIGHUP rereads {other}" in res.stdout
        second = await config()
        assert second["file"] == str(other)
        assert second["config"]["routes"][0]["primary"] == "b"
        # An edit of the file most recently loaded is what SIGHUP picks up...
        other.write_text(yaml.safe_dump(dict(data, routes=[{"match": "*", "primary": "a"},
                                                           {"match": "/x.Y/Z",
                                                            "primary": "b"}])))
        third = await after_hup(second["version"])
        assert len(third["config"]["routes"]) == 2 and third["file"] == str(other)
        # ... and the start file is no longer read: this edit is never served.
        start.write_text(yaml.safe_dump(dict(data, routes=[{"match": "*", "primary": "b"}])))
        os.kill(proc.pid, signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert (await config())["version"] == third["version"]
        # A reload without a file rereads the same file.
        res = await asyncio.to_thread(_cli, "reload", "--admin", base, "--reason", "again")
        assert res.returncode == 0 and f"SIGHUP rereads {other}" in res.stdout, res
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert err.count(f"SIGHUP rereads {other}") >= 3, err  # each reload logs the rule
