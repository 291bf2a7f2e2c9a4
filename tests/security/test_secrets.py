"""Issue 14.9: credentials in notify.webhook (user:pass@host, a token in the path or the
query) never appear in GET /v1/config, the configs table, audit rows or log lines."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.notify import WebhookNotifier
from tests.conftest import sidecar_config

SECRETS = ("hunter2", "T0KEN-IN-PATH", "qtoken99", "fragsecret")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(port: int) -> str:
    return (f"http://alerts:hunter2@127.0.0.1:{port}/services/T0KEN-IN-PATH"
            f"?token=qtoken99#fragsecret")


async def test_a_failing_webhook_logs_no_credentials(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 14.9 (logs): the delivery warning named the URL with its credentials."""
    port = _dead_port()
    for url in (_url(port), f"http://u:hunter2@127.0.0.1:{port}:x/T0KEN-IN-PATH"):
        with caplog.at_level(logging.WARNING, logger="sidecar.notify"):
            async with WebhookNotifier(url, retries=0, timeout_s=2) as notifier:
                notifier.notify({"kind": "hold", "route": "r"})
        text = caplog.text
        assert "not delivered" in text
        assert "127.0.0.1" in text or "InvalidUrl" in text  # an unparsable URL: all masked
        for secret in SECRETS:
            assert secret not in text, (secret, text)
        caplog.clear()


async def test_config_views_and_stores_mask_the_webhook(echo: Any, tmp_path: Path) -> None:
    """Issue 14.9: GET /v1/config and the configs table held the webhook in clear; a reload
    (audited) keeps it masked too."""
    backend = await echo()
    db = tmp_path / "s.duckdb"
    data = sidecar_config(db, {"p": backend.target}, [{"match": "*", "primary": "p"}])
    data["notify"] = {"webhook": _url(_dead_port())}
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        base = f"http://127.0.0.1:{sc.admin.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/v1/config") as resp:
                shown = await resp.text()
            new = dict(data, routes=[{"match": "*", "primary": "p", "timeout_ms": 77}])
            async with http.post(base + "/v1/config", data=yaml.safe_dump(new),
                                 headers={"Content-Type": "application/yaml"}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(base + "/v1/audit") as resp:
                audit = await resp.text()
        assert "127.0.0.1" in shown
        for secret in SECRETS:
            assert secret not in shown and secret not in audit
    finally:
        await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = con.execute("SELECT string_agg(config_json, ' ') FROM configs").fetchone()[0]
        audit_rows = con.execute("SELECT string_agg(coalesce(detail, '') || reason, ' ') "
                                 "FROM audit").fetchone()[0] or ""
        versions = con.execute("SELECT count(DISTINCT config_version) FROM configs").fetchone()
    finally:
        con.close()
    assert versions == (2,) and "***" in stored
    for secret in SECRETS:
        assert secret not in stored and secret not in audit_rows


def test_an_otlp_endpoint_with_credentials_is_logged_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14.9 (sibling): the start-up line and the collector warnings named the trace
    endpoint as given, credentials and all (config or OTEL_EXPORTER_OTLP_ENDPOINT)."""
    from sidecar.config.models import TelemetryConfig
    from sidecar.telemetry.tracing import Tracing

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    settings = TelemetryConfig.model_validate(
        {"traces": {"exporter": "otlp", "endpoint": "http://u:hunter2@127.0.0.1:4317"}})
    for env in (None, "http://127.0.0.1:4317?token=qtoken99"):
        if env is not None:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", env)
        tracing = Tracing(settings)
        try:
            assert tracing.export_target.startswith("otlp http://")
            assert "127.0.0.1:4317" in tracing.export_target
            assert all(s not in tracing.export_target for s in SECRETS)
        finally:
            tracing.shutdown()
