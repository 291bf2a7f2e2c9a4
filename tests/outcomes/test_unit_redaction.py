"""Issue 14.4: outcome unit ids are redacted like the requests' unit ids (``redact.unit``),
one way for every route, so outcomes join their units and no unit id is stored in clear."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.errors import ConfigError
from sidecar.outcomes import MemoryOutcomeSink, OutcomeIngest
from tests.conftest import sidecar_config


def _config(tmp_path: Any, *redacts: dict[str, Any] | None) -> dict[str, Any]:
    routes = [{"match": f"/r.S/M{i}", "primary": "p", **({"redact": r} if r else {})}
              for i, r in enumerate(redacts)]
    return sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"}, routes)


def _ingest(tmp_path: Any, *redacts: dict[str, Any] | None) -> tuple[OutcomeIngest,
                                                                      MemoryOutcomeSink]:
    loaded = parse_config(_config(tmp_path, *redacts))
    sink = MemoryOutcomeSink()
    return OutcomeIngest(sink, unit_redactor=lambda: loaded.unit_redactor), sink


def test_hash_drop_and_none(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWCAR_REDACTION_KEY", "k")
    event = {"event_id": "e", "unit_id": "alice", "metric": "m", "value": 1}
    ingest, sink = _ingest(tmp_path, None, {"unit": True})
    assert ingest.ingest([event]).accepted == 1
    assert sink.rows[0].unit_id == hmac.new(b"k", b"alice", hashlib.sha256).hexdigest()[:32]
    ingest, sink = _ingest(tmp_path, {"inputs": ["x"]})  # no route redacts its unit
    ingest.ingest([event])
    assert sink.rows[0].unit_id == "alice"
    ingest, sink = _ingest(tmp_path, {"unit": True, "mode": "drop"})
    result = ingest.ingest([event, {**event, "event_id": "f", "request_id": "r1"}])
    assert [r.reason for r in result.rejected] == [
        "unit_id: unit ids are not recorded here (redact.unit with mode: drop); identify "
        "the outcome by request_id"]
    assert [(r.unit_id, r.request_id) for r in sink.rows] == [(None, "r1")]


def test_routes_redacting_units_must_agree(tmp_path: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Outcomes name no route: two routes hashing units under different keys (or one
    hashing, one dropping) could not both join, so the config is refused."""
    monkeypatch.setenv("SHADOWCAR_REDACTION_KEY", "k")
    monkeypatch.setenv("OTHER_KEY", "other")
    for second in ({"unit": True, "key_env": "OTHER_KEY"}, {"unit": True, "mode": "drop"}):
        with pytest.raises(ConfigError) as info:
            parse_config(_config(tmp_path, {"unit": True}, second))
        assert [p for p, _ in info.value.problems] == ["routes[1].redact"]
    monkeypatch.setenv("OTHER_KEY", "k")  # another variable, the same key: fine
    parse_config(_config(tmp_path, {"unit": True}, {"unit": True, "key_env": "OTHER_KEY"}))
