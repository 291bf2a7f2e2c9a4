"""Issue 14.7: a reload refuses what it cannot apply (listener TLS, and every other part set
up once at start) with the field and the reason; the old config keeps serving."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.config.reload import RESTART_ONLY, check_reload
from sidecar.errors import ConfigError
from tests.conftest import sidecar_config
from tests.security.test_tls_redaction import pki  # noqa: F401 - the fixture

YAML = {"Content-Type": "application/yaml"}


async def _reload(port: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/v1/config?reason=test",
                             data=yaml.safe_dump(data), headers=YAML) as resp:
            return resp.status, await resp.json()


async def test_adding_listener_tls_by_reload_is_refused(echo: Any, tmp_path: Path,
                                                        pki: Any,  # noqa: F811
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """Issue 14.7: adding client_ca by reload said changed: true and /v1/config showed mTLS
    while plaintext callers still got through. Now: 400 naming tls, nothing changes, by the
    admin API and by SIGHUP."""
    certs, _ = pki
    backend = await echo()
    data = sidecar_config(tmp_path / "t.duckdb", {"p": backend.target},
                          [{"match": "*", "primary": "p"}])
    sc = Sidecar(parse_config(data), config_path=str(tmp_path / "c.yaml"))
    await sc.start()
    try:
        version = sc.loaded.version
        tls = {"cert": str(certs / "server.pem"), "key": str(certs / "server.key"),
               "client_ca": str(certs / "ca.pem")}
        status, body = await _reload(sc.admin.port, dict(data, tls=tls))
        assert status == 400 and body["version"] == version
        problems = {p["path"]: p["message"] for p in body["problems"]}
        assert list(problems) == ["tls"] and "restart" in problems["tls"]
        assert sc.loaded.version == version and sc.loaded.config.tls is None
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(dict(data, tls=tls)))
        with caplog.at_level(logging.ERROR):
            await sc._reload_file("SIGHUP")  # what the SIGHUP handler runs
        assert sc.loaded.version == version
        assert any("tls: changes only with a restart" in r.getMessage() for r in caplog.records)
    finally:
        await sc.aclose()


@pytest.mark.parametrize(("key", "value"), [
    ("tls", {"cert": "server.pem", "key": "server.key"}),
    ("notify", {"webhook": "http://127.0.0.1:9/hook"}),
    ("outcomes", {"max_events": 5}),
    ("max_message_bytes", 4096),
    ("triggers", [{"name": "t", "kind": "age", "backend": "p", "max_age_days": 30}]),
])
def test_every_part_set_up_at_start_is_restart_only(pki: Any, key: str,  # noqa: F811
                                                    value: Any) -> None:
    """Issue 14.7 (siblings): the webhook notifier, outcome ingestion, message limits and
    the trigger loop are built once at start too; a reload changing them is refused."""
    tmp_path, _ = pki
    base = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": "*", "primary": "p"}])
    old = parse_config(base, base_dir=tmp_path).config
    new = parse_config(dict(base, **{key: value}), base_dir=tmp_path).config
    with pytest.raises(ConfigError) as info:
        check_reload(old, new)
    assert [p for p, _ in info.value.problems] == [key]
    assert key == "triggers" or key in RESTART_ONLY
